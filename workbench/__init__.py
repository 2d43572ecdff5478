"""contrast-workbench: preference optimisation and contrastive fine-tuning of LLMs and embedding models."""

import logging as _logging

__version__ = "0.1.0"


class _DropMessage(_logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: _logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


# bitsandbytes (imported by peft/trl) warns on every import, on AVX-512-BF16 CPUs, that an optional accelerated 4-bit
# CPU kernel from the `kernels` package is missing. We never run 4-bit kernels on CPU (QLoRA needs CUDA here), so the
# line is noise in every run's output. Only that message is dropped; every other bitsandbytes warning still shows.
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    _DropMessage("Failed to load CPU gemm_4bit_forward from kernels-community"))
