"""HyPO's online sampler against a vLLM server in another process or on another node (``hypo.sampler: server``).

The server-mode twin of :class:`workbench.training.online_samples.VLLMSampler`, with the same interface
(``sample(model, prompts, step)``, ``sync_weights(model)``, ``close()``), the same ``sync_every`` schedule and the same
per-request seeds ``derive_seed(seed, step, micro-batch, rank, prompt index)``, so everything that module says about
bias and resumes holds here too. The server is :mod:`workbench.generation.vllm_server` (``workbench serve``), which
vLLM runs with our worker extension and its development routes on. What goes over the wire:

* **weights** -- the policy's full weights (:func:`workbench.training.weight_sync.policy_weights` inside
  :func:`~workbench.training.weight_sync.gathered`: shards gathered, LoRA merged out of place) are written as
  safetensors files of at most 256 MiB into ``hypo.server.weights_dir``, and each is named in
  ``POST /collective_rpc {"method": "workbench_load_weights_file", "args": [path]}``; every worker loads it and answers
  its tensor count. The folder must be readable by the server *at the same path*: the same node, or a shared
  filesystem mounted identically on both (:func:`check_server` proves it before training). Then
  ``POST /reset_prefix_cache``, so no cached KV block of the old weights is reused. Only the main rank writes and
  posts; the other ranks join the gather and then wait at a barrier, so no rank samples from stale weights.
* **samples** -- ``POST /v1/completions`` with the prompt as token ids, ``n = k``, the temperature, ``top_p = 1``,
  ``top_k = 0`` and no penalties (sent explicitly, so the server's defaults cannot reshape pi), ``max_tokens``, the
  request's ``seed`` (its k samples are vLLM's child requests seed, seed+1, ...: choice j is child j), and
  ``return_token_ids: true``, which returns each choice's ``token_ids`` (vllm/entrypoints/openai/completion/
  protocol.py, ``CompletionRequest.return_token_ids``). One request per prompt, sent concurrently: the engine batches
  them, and per-request seeds make each prompt's samples independent of its batch-mates.
"""

from __future__ import annotations

import json
import os
import uuid
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from workbench.errors import WorkbenchError
from workbench.training.online_samples import SyncedSampler

HOW_TO_START = ("start it on that node with `workbench serve --config <this recipe>` (see "
                "recipes/hypo/gpu_qwen7b_server.yaml)")


class ServerError(WorkbenchError):
    """The server refused or failed a request: the message says which route and what vLLM answered."""


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        try:
            detail = json.loads(detail)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        raise ServerError(f"{url}: HTTP {e.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ServerError(f"{url}: no answer ({getattr(e, 'reason', e)})") from None
    return json.loads(raw) if raw else {}


def check_server(host: str, port: int, weights_dir: str, timeout: float = 10.0) -> None:
    """Before any run folder exists: the server answers ``/health``, has the development routes and our worker
    extension, and reads ``weights_dir`` at the same path (a probe file written here is read back there)."""
    from workbench.generation.vllm_server import healthy

    url = f"http://{host}:{port}"
    if not healthy(url, timeout=timeout):
        raise WorkbenchError(f"hypo.server: no vLLM server answers at {host}:{port} (GET /health); {HOW_TO_START}, "
                             f"or set hypo.server.host/port to where it runs")
    d = Path(weights_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f"{uuid.uuid4().hex}.workbench-probe"
        token = uuid.uuid4().hex
        probe.write_text(token)
    except OSError as e:
        raise WorkbenchError(f"hypo.server.weights_dir: cannot write {d} ({e}); set it to a folder this process "
                             "can write and the server can read") from None
    try:
        got = _post(f"{url}/collective_rpc", {"method": "workbench_read_probe", "args": [str(probe.resolve())]},
                    timeout)
    except ServerError as e:
        if "HTTP 404" in str(e):
            raise WorkbenchError(f"hypo.server: the server at {host}:{port} has no /collective_rpc route: it was "
                                 f"started without VLLM_SERVER_DEV_MODE=1; {HOW_TO_START}") from None
        if "no attribute 'workbench_read_probe'" in str(e):
            raise WorkbenchError(f"hypo.server: the server at {host}:{port} lacks the weight-sync worker extension "
                                 "(--worker-extension-cls workbench.generation.vllm_worker.WeightSyncExtension); "
                                 f"{HOW_TO_START}") from None
        raise WorkbenchError(f"hypo.server.weights_dir: the server at {host}:{port} cannot read {probe.resolve()} "
                             f"({e}); weights_dir must be on a filesystem both nodes mount at the same path") from None
    finally:
        probe.unlink(missing_ok=True)
    if any(r != token for r in got.get("results", [None])):
        raise WorkbenchError(f"hypo.server.weights_dir: the server read something else at {probe.resolve()}: it sees "
                             "another folder of that name; weights_dir must be one folder both nodes share")


class ServerSampler(SyncedSampler):
    name = "server"

    def __init__(self, host: str, port: int, weights_dir: str, k: int, temperature: float, max_new_tokens: int,
                 sync_every: int, seed: int = 0, timeout: float = 600.0):
        self.url = f"http://{host}:{port}"
        self.weights_dir = Path(weights_dir)
        self.k, self.temperature, self.max_new_tokens, self.sync_every = k, temperature, max_new_tokens, sync_every
        self.seed, self.timeout = seed, timeout
        self._tag = uuid.uuid4().hex[:12]  # file names of this trainer's syncs (several trainers may share the folder)
        self._synced_at: int | None = None
        self._step, self._micro = None, 0  # the optimizer step of the last call, and calls within it
        self.syncs = 0

    def close(self) -> None:
        """Nothing to stop: the server belongs to whoever started it and outlives this run."""

    def _rpc(self, method: str, *args: str) -> list:
        return _post(f"{self.url}/collective_rpc", {"method": method, "args": list(args)}, self.timeout)["results"]

    @torch.no_grad()
    def sync_weights(self, model) -> None:
        """Write the policy's full weights to ``weights_dir`` and have every server worker load them (see the module
        docstring). Every rank calls it: the gather is a collective."""
        from safetensors.torch import save_file

        from workbench.training.weight_sync import buckets, gathered, policy_weights

        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        main = not dist or torch.distributed.get_rank() == 0
        with gathered(model):
            weights = policy_weights(model)
            if not main:
                for _ in weights:  # FSDP2's full_tensor() is a collective: every rank walks the weights in step
                    pass
            else:
                self.weights_dir.mkdir(parents=True, exist_ok=True)
                for i, bucket in enumerate(buckets(weights)):
                    path = (self.weights_dir / f"{self._tag}-sync{self.syncs}-{i}.safetensors").resolve()
                    tmp = path.with_name(path.name + ".tmp")
                    try:
                        save_file(dict(bucket), str(tmp))
                        os.replace(tmp, path)  # the server never sees a half-written file
                        loaded = self._rpc("workbench_load_weights_file", str(path))
                    finally:
                        tmp.unlink(missing_ok=True)
                        path.unlink(missing_ok=True)
                    if any(str(n) != str(len(bucket)) for n in loaded):
                        raise ServerError(f"{self.url}: a worker loaded {loaded} tensors of {len(bucket)} from {path}")
                if not _post(f"{self.url}/reset_prefix_cache", {}, self.timeout).get("success"):
                    raise ServerError(f"{self.url}: /reset_prefix_cache failed (requests still running on the "
                                      "server?): cached KV blocks of the old weights could be reused")
        if dist:
            torch.distributed.barrier()
        self.syncs += 1

    def complete(self, prompts: list[list[int]], seeds: list[int], logprobs: bool = False) -> list[list[dict]]:
        """One ``/v1/completions`` request per prompt (concurrently), ``n = k``; returns, per prompt, the k choices in
        child order, each ``{"token_ids": [...], "logprob": float | None}`` (logprob: the summed log-probs of the
        sampled tokens under the server's raw distribution, only with ``logprobs=True``: for tests and diagnostics,
        never for the loss)."""

        def one(prompt: list[int], seed: int) -> list[dict]:
            body = {"prompt": prompt, "n": self.k, "temperature": self.temperature, "top_p": 1.0, "top_k": 0,
                    "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                    "max_tokens": self.max_new_tokens, "seed": seed, "return_token_ids": True}
            if logprobs:
                body["logprobs"] = 0  # the sampled token's own log-prob at each step
            choices = sorted(_post(f"{self.url}/v1/completions", body, self.timeout)["choices"],
                             key=lambda c: c["index"])
            if len(choices) != self.k or any(c.get("token_ids") is None for c in choices):
                raise ServerError(f"{self.url}/v1/completions: asked for {self.k} choices with token_ids, got "
                                  f"{len(choices)} (is the server a vLLM with return_token_ids?)")
            return [{"token_ids": list(c["token_ids"]),
                     "logprob": sum(c["logprobs"]["token_logprobs"]) if logprobs else None} for c in choices]

        with ThreadPoolExecutor(max_workers=max(1, min(len(prompts), 64))) as pool:
            return list(pool.map(one, prompts, seeds))

    def sample(self, model, prompts: list[list[int]], step: int) -> list[list[list[int]]]:
        seeds = self.request_seeds(model, len(prompts), step)  # the schedule and seeds of VLLMSampler
        return [[c["token_ids"] or [0] for c in row] for row in self.complete(prompts, seeds)]
