"""The tiny models are the same bytes on every build, thread count and machine.

Each is built twice into fresh folders, in subprocesses so that the settings really take effect: once on one thread
(RAYON_NUM_THREADS for the tokenizers' trainer, OMP_NUM_THREADS and torch for the rest) with this machine's CPU
kernels, once on two threads with torch's scalar kernels (ATEN_CPU_CAPABILITY=default: the path that machines with
AVX-512 or without AVX2 take; torch's own ``normal_`` gives other floats there) and HF_HUB_OFFLINE flipped (it once
leaked into tiny-bert's tokenizer_config.json). Every file must match, byte for byte, and match the sha256 recorded
below, so that a build that differs on any machine fails here.

If a change to a builder is deliberate, update SHA256 with the hashes this test prints and bump
``workbench.tiny_models.BUILD_VERSION`` (cached builds carry it in their marker and are rebuilt when it changes).
The config files hold ``transformers_version`` (and tiny-bert's config_sentence_transformers.json the
sentence-transformers version): both are pinned exactly in pyproject.toml, so a version bump changes the hashes
here, as it should; so would a new safetensors or tokenizers serialisation.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.models import resolve_model

SHA256 = {
    "tiny-llama": {
        "chat_template.jinja": "9fe579a2c222698c7ba22d46e26466362fbe951569a89096c366267f9b82ab92",
        "config.json": "8a8805a66c5a7e6356d3f198c1c59cd78dd19e4a70af02c3f862af0b46edbdd7",
        "generation_config.json": "84e978a58f051576ed27be21d5b4400cd0bcc295193499d2ed33695ed9fc7400",
        "model.safetensors": "9e01f45b7a108e7021d242d377bfcd2388c6b4fbccef035e5b7fe56426c86654",
        "tokenizer.json": "33b792120807c7a289fcb8e8a3954bdbd1e16cc7c6452ac68cc2c6d15828edec",
        "tokenizer_config.json": "931c183c49df9428028e6765b4ed1d74bed590bca87bec1479c5b214112e7c7d",
    },
    "tiny-bert": {
        "1_Pooling/config.json": "652ae4d1fa6df34d651fcf6a67b2f001607cf4e338790358a6ef0d5ff9498fd8",
        "config.json": "f6555df7b2a4ea79e3f6f19ac7c123979853e554fd4308e26f8cbbb965e0fd3f",
        "config_sentence_transformers.json": "b829fe302d90c6d46f387dae2fbb59dc5fed94c384a9f8b6c7412d0ee847bbaa",
        "model.safetensors": "3083ca4cbd33977580e55074c3a8b909027352527c4dee1d5832ea3f5a0a8dbb",
        "modules.json": "e4068aab8a95663636c4c28044a95eafdb6492387397ec8283d8f8b31078d645",
        "sentence_bert_config.json": "3084164002c0bca01b0259c5327123803fce32e660a57feb93184ffead186fc8",
        "tokenizer.json": "10067d2d3a411b700279c2eae05eb16e5f67239d5986e73faf1cfcedf60ea3b7",
        "tokenizer_config.json": "a0781f296480fcf315b73a3b95e8a057bda19705b53c49530675660cb34d8888",
    },
    "toy-llama": {
        "config.json": "25ed1adeafc4088d995db5f42af759e106a627979d017d15bf3bb422a26179ff",
        "generation_config.json": "219722e2d3792bda1bedce53513f82be3bac2dc6812ef338217efb5828a07585",
        "model.safetensors": "f746410a76546501bc12492ac834189beb7e77546c032d053509d21a31fff74f",
        "tokenizer.json": "91668999ddf8202f9523fb45b504a167646b43038f44f75e4d9d47633515f32e",
        "tokenizer_config.json": "686c3157aa5d31838729e4660eb25e2729ede12888d430ff1411a80ccac2516d",
    },
}

# Builds every tiny model into argv[1]/<name> on argv[2] torch threads.
_CHILD = """
import sys
from pathlib import Path

import torch

torch.set_num_threads(int(sys.argv[2]))
from workbench import tiny_models

for name in sys.argv[3:]:
    out = Path(sys.argv[1]) / name
    out.mkdir()
    getattr(tiny_models, "build_" + name.replace("-", "_"))(out)
"""


def _hashes(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def _build_all(out: Path, threads: int, **env) -> dict[str, dict[str, str]]:
    full_env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads), **env}
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(out), str(threads), *SHA256], cwd=out, env=full_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return {name: _hashes(out / name) for name in SHA256}


def test_every_tiny_model_is_byte_identical_across_threads_and_cpu_kernels(tmp_path):
    one = _build_all(tmp_path / "one-thread", 1, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    two = _build_all(tmp_path / "two-threads-scalar", 2, TOKENIZERS_PARALLELISM="true", HF_HUB_OFFLINE="0",
                     ATEN_CPU_CAPABILITY="default")
    for name in SHA256:
        differ = sorted(f for f in one[name].keys() | two[name].keys() if one[name].get(f) != two[name].get(f))
        assert not differ, f"{name}: these files differ between two builds (1 vs 2 threads, CPU kernels, HF_HUB_OFFLINE): {differ}"
    assert one == SHA256, ("a tiny model's files are not the recorded ones (a builder or a pinned library changed, "
                           "or the build depends on the machine); if deliberate, bump tiny_models.BUILD_VERSION and "
                           "record:\n" + json.dumps(one, indent=4))


def test_stale_cached_build_is_rebuilt(tmp_path, monkeypatch):
    """A folder built by older code (its marker has no or another build key) is rebuilt, not used."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    stale = tmp_path / "models" / "tiny-bert"
    stale.mkdir(parents=True)
    (stale / "tokenizer.json").write_text("{}")
    (stale / ".workbench-built").write_text(json.dumps({"name": "tiny-bert"}))  # the marker before builds had keys
    path = Path(resolve_model("tiny-bert"))
    got = _hashes(path)
    assert path == stale and got.pop(".workbench-built") and got == SHA256["tiny-bert"]
    marker = json.loads((path / ".workbench-built").read_text())
    assert marker["build"].startswith("tiny-models v")
    # the same key again: the cached folder is used as it is
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_model("tiny-bert")) == path and (path / "model.safetensors").stat().st_mtime_ns == mtime
    # another key (older builder, other library versions): rebuilt
    (path / ".workbench-built").write_text(json.dumps({**marker, "build": "tiny-models v1"}))
    (path / "model.safetensors").write_bytes(b"stale")
    assert _hashes(Path(resolve_model("tiny-bert")))["model.safetensors"] == SHA256["tiny-bert"]["model.safetensors"]


@pytest.mark.parametrize("name", list(SHA256))
def test_cached_models_the_tests_use_are_the_recorded_build(name):
    """What resolve_model hands the other tests (the folder cached under $WORKBENCH_HOME) is the recorded build."""
    got = _hashes(Path(resolve_model(name)))
    assert got.pop(".workbench-built")
    assert got == SHA256[name]
