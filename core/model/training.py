"""Stage `train`: one readable LoRA fine-tuning loop (in the spirit of nanoGPT).

Loss on the assistant's tokens only, its end-of-turn token kept (pad = eos in SmolLM2, so masking pads
would also mask the stop token and the model would never learn to stop). Batches are length-bucketed by a
token budget, so almost no compute goes to padding. bf16 autocast on GPU and on CPUs with AMX.
Evaluates each epoch, keeps the best adapter, stops early, checkpoints for resume, honours cancellation.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

IGNORE = -100


class Cancelled(Exception):
    """Raised by the progress callback to stop training cleanly."""


@dataclass
class TrainConfig:
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    learning_rate: float = 3e-4
    epochs: int = 2
    batch_tokens: int | None = None  # padded tokens a step; None: 4096 on CPU, 16384 on a GPU (launch-bound
    # below that: an H100 takes ~0.35 s a LoRA step of this model whatever its size, docs/benchmarks.md)
    max_length: int = 384
    warmup_steps: int = 10
    patience: int = 1  # epochs without eval improvement before stopping
    eval_examples: int = 128
    time_budget_seconds: float | None = None
    checkpoint_every: int = 50
    seed: int = 0
    bf16: bool | None = None  # None: on when the hardware does it fast

    @classmethod
    def from_dict(cls, values: dict | None) -> TrainConfig:
        known = {k: v for k, v in (values or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


def bf16_is_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    return "amx_bf16" in flags or "avx512_bf16" in flags


# --- Data -----------------------------------------------------------------------------------------------

def encode(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[int]] | None:
    """Token ids and labels for one conversation: prompt masked, the reply and its end token learned.
    Prompt and reply are tokenized apart, exactly as at inference (prompt in, reply generated)."""
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = prompt_ids + reply_ids
    if len(ids) > max_length:
        return None  # a truncated reply would teach the model to stop mid-answer
    return ids, [IGNORE] * len(prompt_ids) + reply_ids


def load_examples(path: Path, tokenizer, max_length: int) -> list[tuple[list[int], list[int]]]:
    encoded = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            example = encode(tokenizer, json.loads(line)["messages"], max_length)
            if example:
                encoded.append(example)
    return encoded


def bucket_batches(examples: list, batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped by similar length so each batch is ~batch_tokens padded tokens; batch order shuffled."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    batches, current, longest = [], [], 0
    for index in order:
        length = len(examples[index][0])
        if current and max(longest, length) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, length)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(examples: list, indices: list[int], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(examples[i][0]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    labels = torch.full((len(indices), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        tokens, targets = examples[i]
        ids[row, :len(tokens)] = torch.tensor(tokens)
        labels[row, :len(targets)] = torch.tensor(targets)
        mask[row, :len(tokens)] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def completion_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on reply tokens only, with logits computed only there: the 49k-wide LM head and its
    softmax would otherwise run on every prompt and padding position (about a third of all compute)."""
    causal = model.get_base_model()
    hidden = causal.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = causal.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


# --- The loop ------------------------------------------------------------------------------------------

def train(base_dir: Path, dataset_dir: Path, out_dir: Path, config: TrainConfig,
          on_progress: Callable[[dict], None] | None = None, progress_bar: bool = False) -> dict:
    """Fine-tune a LoRA adapter; the best one (by eval loss) ends up in out_dir/adapter. Returns a summary."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_bf16 = bf16_is_fast(device) if config.bf16 is None else config.bf16
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    train_set = load_examples(dataset_dir / "train.jsonl", tokenizer, config.max_length)
    eval_set = load_examples(dataset_dir / "eval.jsonl", tokenizer, config.max_length)[:config.eval_examples]
    if not train_set:
        raise ValueError(f"no usable training examples in {dataset_dir}")

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(device)
    checkpoint = out_dir / "checkpoint"
    if (checkpoint / "adapter_config.json").exists():
        model = PeftModel.from_pretrained(model, checkpoint, is_trainable=True)
        state = json.loads((checkpoint / "state.json").read_text())
    else:
        model = get_peft_model(model, LoraConfig(
            task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout, target_modules=config.target_modules))
        state = {"epoch": 0, "batch": 0, "step": 0, "best_eval": None, "stale_epochs": 0, "history": []}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=0.0, fused=device.type == "cuda")
    if (checkpoint / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt"))

    batch_tokens = config.batch_tokens or (16384 if device.type == "cuda" else 4096)
    epoch_batches = [bucket_batches(train_set, batch_tokens, random.Random(config.seed + e))
                     for e in range(config.epochs)]
    total_steps = sum(len(b) for b in epoch_batches)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to a tenth
        if step < config.warmup_steps:
            return config.learning_rate * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(total_steps - config.warmup_steps, 1)
        return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    eval_seconds = 0.0

    @torch.no_grad()
    def eval_loss_now() -> float | None:
        nonlocal eval_seconds
        if not eval_set:
            return None
        eval_started = time.perf_counter()
        model.eval()
        total, count = 0.0, 0
        batches = bucket_batches(eval_set, batch_tokens, random.Random(0))
        if progress_bar:  # evaluation takes minutes on a CPU: it shows its own bar, never a silence
            batches = tqdm(batches, desc="evaluate (held-out loss)", unit="batch")
        for indices in batches:
            batch = collate(eval_set, indices, tokenizer.pad_token_id or tokenizer.eos_token_id, device)
            with autocast():
                loss = completion_loss(model, batch)
            targets = int((batch["labels"][:, 1:] != IGNORE).sum())
            total, count = total + loss.item() * targets, count + targets
        model.train()
        eval_seconds += time.perf_counter() - eval_started
        return total / max(count, 1)

    def save(where: Path) -> None:
        model.save_pretrained(where)
        tokenizer.save_pretrained(where)

    def save_checkpoint() -> None:
        tmp = out_dir / "checkpoint.tmp"
        save(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state))
        if checkpoint.exists():
            import shutil
            shutil.rmtree(checkpoint)
        tmp.rename(checkpoint)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.train()
    started, tokens_seen, stopped = time.perf_counter(), 0, None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bar = None
    if progress_bar:  # a time-budgeted run counts its budget, not steps it will never reach
        budget = config.time_budget_seconds
        bar = tqdm(total=max(round(budget), 1), unit="s", desc=f"train (budget {budget / 60:g} min)") if budget else \
            tqdm(total=total_steps, initial=state["step"], unit="step", desc="train")

    def end_of_epoch() -> bool:
        """Evaluate, keep the best adapter; True when training should stop early."""
        eval_loss = eval_loss_now()
        state["history"].append({"step": state["step"], "eval_loss": eval_loss})
        if eval_loss is None or state["best_eval"] is None or eval_loss < state["best_eval"]:
            state["best_eval"], state["stale_epochs"] = eval_loss, 0
            save(out_dir / "adapter")
        else:
            state["stale_epochs"] += 1
        report(eval_loss=eval_loss)
        return state["stale_epochs"] >= config.patience

    last_loss = None

    def report(**extra) -> None:
        elapsed = time.perf_counter() - started - eval_seconds
        rate = tokens_seen / elapsed if elapsed else 0.0
        steps_per_s = (state["step"] - first_step) / elapsed if elapsed else 0.0
        remaining = (total_steps - state["step"]) / steps_per_s if steps_per_s else None
        if config.time_budget_seconds:
            remaining = min(remaining or math.inf, max(config.time_budget_seconds - elapsed, 0))
        if on_progress:
            on_progress({"step": state["step"], "total_steps": total_steps, "loss": last_loss,
                         "tokens_per_second": rate, "eta_seconds": remaining, "history": state["history"], **extra})

    first_step = state["step"]
    while state["epoch"] < config.epochs and stopped is None:
        batches = epoch_batches[state["epoch"]]
        while state["batch"] < len(batches):
            batch = collate(train_set, batches[state["batch"]], pad_id, device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(state["step"])
            with autocast():
                loss = completion_loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens_seen += int(batch["attention_mask"].sum())
            state["step"] += 1
            state["batch"] += 1
            last_loss = loss.item()
            if state["step"] % 5 == 0 or state["batch"] == len(batches):
                state["history"].append({"step": state["step"], "loss": round(last_loss, 4)})
            if bar is not None:
                if config.time_budget_seconds:
                    bar.update(min(round(time.perf_counter() - started), bar.total) - bar.n)
                else:
                    bar.update(1)
                bar.set_postfix(step=f"{state['step']}/{total_steps}", loss=f"{last_loss:.3f}")
            report()  # may raise Cancelled
            if state["step"] % config.checkpoint_every == 0:
                save_checkpoint()
            if config.time_budget_seconds and time.perf_counter() - started > config.time_budget_seconds:
                stopped = "time budget"
                break
        if stopped is None:
            state["epoch"], state["batch"] = state["epoch"] + 1, 0
        if end_of_epoch() and stopped is None and state["epoch"] < config.epochs:
            stopped = "early stopping"
        save_checkpoint()
    if bar is not None:
        bar.close()
        why = {"time budget": f"the {config.time_budget_seconds / 60:g}-minute budget ran out",
               "early stopping": "the held-out loss stopped improving", None: "all epochs done"}[stopped]
        tqdm.write(f"train: stopped at step {state['step']} of {total_steps}: {why}")
    elapsed = time.perf_counter() - started - eval_seconds
    summary = {"steps": state["step"], "total_steps": total_steps, "resumed_from_step": first_step,
               "best_eval_loss": state["best_eval"],
               "final_loss": last_loss, "tokens": tokens_seen, "seconds": round(elapsed, 1),
               "tokens_per_second": round(tokens_seen / elapsed, 1) if elapsed else None,
               "stopped": stopped or "completed", "bf16": use_bf16, "device": device.type,
               "train_examples": len(train_set), "config": asdict(config)}
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2))
    return summary
