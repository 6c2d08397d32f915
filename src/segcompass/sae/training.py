"""SAE training with the paper's objective ‖z − ẑ‖² + α‖h‖₁ (eq. 7; appendix A.2).

Decoder rows are kept at unit norm (so the plain L1 equals the decoder-norm-weighted L1 and the penalty cannot be
dodged by shrinking codes), gradients parallel to them are removed, dead features are tracked, and every epoch
ends with a held-out evaluation (L0, fraction of variance explained, dead fraction) and a resumable checkpoint::

    output_dir/
      checkpoint-epoch-{e}/          model (save_pretrained) + optimizer.pt + scheduler.pt + trainer_state.json
      metrics.jsonl                  one line per logged step / evaluation
      config.json, model.safetensors the final SAE (loads with AutoModel after `import segcompass`)
      metrics.json                   final held-out metrics
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..utils.io import save_pretrained_atomic, write_json_atomic
from ..utils.logging import get_logger
from .activations import ActivationStore
from .modeling_sae import SparseAutoencoder

logger = get_logger(__name__)
_CHECKPOINT = re.compile(r"checkpoint-epoch-(\d+)$")


class NonFiniteLossError(ValueError):
    """Training met a loss (or gradient norm) that is inf or NaN; nothing with non-finite weights is saved."""


def check_finite_loss(loss, where: str, hint: str) -> None:
    """Raise :class:`NonFiniteLossError` naming ``where`` (step / epoch) and ``hint`` (what to check) when ``loss``
    (a number or a tensor) is not finite."""
    value = float(loss.detach().float().sum()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(f"non-finite loss {value} at {where}; training stopped and nothing with NaN weights "
                                 f"was saved. {hint}")


def _check_finite_weights(model: torch.nn.Module, where: str) -> None:
    bad = [name for name, param in model.named_parameters() if not torch.isfinite(param).all()]
    if bad:
        raise NonFiniteLossError(f"non-finite weights ({', '.join(bad[:3])}) at {where}; not saved. Check the "
                                 "activation cache for huge or NaN values, or lower --learning_rate.")


@dataclass
class SAETrainingArguments:
    """Hyper-parameters of SAE training (defaults: paper appendix A.2 where it gives them)."""

    output_dir: str = field(metadata={"help": "Where checkpoints, metrics and the final SAE are written."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate (paper: 5e-5)."})
    batch_size: int = field(default=64, metadata={"help": "Sequences per optimisation step (paper: 64)."})
    num_epochs: int = field(default=10, metadata={"help": "Epochs over the cached activations (paper: 10)."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Fraction of steps with linear warm-up."})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "Cosine decay ends at lr * min_lr_ratio."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (0: decay fights sparsity)."})
    eval_fraction: float = field(default=0.05, metadata={"help": "Fraction of sequences held out for evaluation."})
    dead_feature_window: int = field(default=1000, metadata={"help": "Steps without firing after which a feature counts as dead."})
    init_b_dec_from_data: bool = field(
        default=True, metadata={"help": "Start b_dec at the mean activation of the first batches "
                                        "(--no_init_b_dec_from_data: start it at zero)."}
    )
    logging_steps: int = field(default=50, metadata={"help": "Log training metrics every N steps."})
    seed: int = field(default=0, metadata={"help": "Seed for the split, shuffling and initialisation."})
    resume: bool = field(
        default=True, metadata={"help": "Continue from the latest checkpoint-epoch-N in output_dir when there is one "
                                        "(--no_resume: start fresh, ignoring it)."}
    )
    save_total_limit: int = field(default=2, metadata={"help": "Keep only the newest N epoch checkpoints."})

    def __post_init__(self):
        for name in ("learning_rate", "batch_size", "num_epochs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"`eval_fraction` must be in [0, 1), got {self.eval_fraction}.")


@torch.no_grad()
def evaluate_sae(sae: SparseAutoencoder, batches) -> dict[str, float]:
    """Held-out metrics over an iterable of (n_tokens, d_in) batches.

    ``fve`` = 1 − Σ‖z − ẑ‖² / Σ‖z − z̄‖² (pooled over all tokens), ``l0`` = mean active features per token,
    ``mse`` = mean ‖z − ẑ‖², ``dead_fraction`` = features that never fired on the held-out tokens.
    """
    sq_err = total = sq_sum = l0 = 0.0
    linear_sum = None
    fired = torch.zeros(sae.config.d_sae, dtype=torch.bool)
    for batch in batches:
        out = sae(batch)
        sq_err += float((out.reconstruction - batch).pow(2).sum())
        sq_sum += float(batch.pow(2).sum())
        linear_sum = batch.sum(0) if linear_sum is None else linear_sum + batch.sum(0)
        l0 += float((out.feature_acts != 0).sum())
        total += batch.shape[0]
        fired |= (out.feature_acts != 0).any(0).cpu()
    if total == 0:
        raise ValueError("No evaluation tokens: raise `eval_fraction` or provide more activations.")
    variance = sq_sum - float(linear_sum.pow(2).sum()) / total  # Σ‖z − z̄‖²
    return {
        "fve": 1.0 - sq_err / max(variance, 1e-12),
        "l0": l0 / total,
        "mse": sq_err / total,
        "dead_fraction": float((~fired).float().mean()),
        "eval_tokens": total,
    }


class SAETrainer:
    """Train a [`SparseAutoencoder`] on an [`ActivationStore`] (see the module docstring)."""

    def __init__(self, sae: SparseAutoencoder, args: SAETrainingArguments, store: ActivationStore):
        if store.d_in != sae.config.d_in:
            raise ValueError(
                f"Activations have d_in={store.d_in} but the SAE expects d_in={sae.config.d_in}; build the SAE with "
                f"SparseAutoencoderConfig(d_in={store.d_in}, ...)."
            )
        if sae.config.activation == "jumprelu":
            raise ValueError("Training JumpReLU thresholds is not supported; train a 'relu' or 'topk' SAE.")
        self.sae, self.args, self.store = sae, args, store
        self.output_dir = Path(args.output_dir)
        num_train = store.num_sequences(split="train", eval_fraction=args.eval_fraction, seed=args.seed)
        if num_train == 0:
            raise ValueError("No training sequences: the activation store is empty or eval_fraction is too large.")
        self.steps_per_epoch = math.ceil(num_train / args.batch_size)
        self.total_steps = self.steps_per_epoch * args.num_epochs
        self.optimizer = torch.optim.AdamW(sae.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
        warmup = max(1, int(args.warmup_ratio * self.total_steps))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
            return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.steps_since_fired = torch.zeros(sae.config.d_sae, dtype=torch.long)
        self.global_step = 0
        self.start_epoch = 0
        self.resumed_metrics: dict = {}  # the held-out metrics of the checkpoint resumed from

    # -------------------------------------------------------------------------------- checkpoints
    def latest_checkpoint(self) -> Path | None:
        if not self.output_dir.is_dir():
            return None
        found = [(int(m.group(1)), p) for p in self.output_dir.iterdir() if (m := _CHECKPOINT.search(p.name))]
        found = [(e, p) for e, p in found if (p / "trainer_state.json").is_file()]
        return max(found)[1] if found else None

    def _save_checkpoint(self, epoch: int, metrics: dict) -> None:
        _check_finite_weights(self.sae, f"epoch {epoch} (step {self.global_step})")
        path = self.output_dir / f"checkpoint-epoch-{epoch}"
        # written in a temporary directory and renamed: a checkpoint directory is complete or absent
        staging = self.output_dir / f".checkpoint-epoch-{epoch}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        self.sae.save_pretrained(staging)
        torch.save(self.optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), staging / "scheduler.pt")
        torch.save({"steps_since_fired": self.steps_since_fired}, staging / "feature_state.pt")
        state = {"epoch": epoch, "global_step": self.global_step, "metrics": metrics, "args": asdict(self.args)}
        (staging / "trainer_state.json").write_text(json.dumps(state, indent=2))
        if path.exists():  # a checkpoint of an earlier run started with --no_resume
            shutil.rmtree(path)
        os.replace(staging, path)
        checkpoints = sorted(
            (int(m.group(1)), p) for p in self.output_dir.iterdir() if (m := _CHECKPOINT.search(p.name))
        )
        for _, stale in checkpoints[: max(0, len(checkpoints) - self.args.save_total_limit)]:
            shutil.rmtree(stale)

    def _load_checkpoint(self, path: Path) -> None:
        state = json.loads((path / "trainer_state.json").read_text())
        loaded = type(self.sae).from_pretrained(path)
        self.sae.load_state_dict(loaded.state_dict())
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        self.steps_since_fired = torch.load(path / "feature_state.pt", weights_only=True)["steps_since_fired"]
        self.global_step = state["global_step"]
        self.start_epoch = state["epoch"] + 1
        self.resumed_metrics = dict(state.get("metrics") or {})
        logger.info("Resumed SAE training from %s (epoch %d done).", path, state["epoch"])

    # -------------------------------------------------------------------------------- loop
    def _log(self, record: dict) -> None:
        with open(self.output_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _eval_batches(self):
        return self.store.iter_batches(
            self.args.batch_size, split="eval", eval_fraction=self.args.eval_fraction, seed=self.args.seed, shuffle=False
        )

    def train(self) -> dict[str, float]:
        """Run (or resume) training; returns the final held-out metrics."""
        args, sae = self.args, self.sae
        self.output_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = self.latest_checkpoint() if args.resume else None
        if checkpoint is not None:
            self._load_checkpoint(checkpoint)
        elif args.init_b_dec_from_data:
            with torch.no_grad():
                first = next(self.store.iter_batches(args.batch_size * 4, eval_fraction=args.eval_fraction, seed=args.seed))
                sae.b_dec.copy_(first.mean(0))
        sae.train()
        progress = tqdm(total=self.total_steps, initial=self.global_step, desc="Training SAE", unit="step")
        # a finished job run again trains nothing: its metrics are those of the checkpoint it resumed from
        metrics: dict[str, float] = dict(self.resumed_metrics)
        hint = ("Check the activation cache for huge or NaN values (one 1e30 is enough), or lower --learning_rate; "
                "the last good checkpoint-epoch-N in output_dir is kept.")
        for epoch in range(self.start_epoch, args.num_epochs):
            for batch in self.store.iter_batches(
                args.batch_size, split="train", eval_fraction=args.eval_fraction, seed=args.seed, epoch=epoch
            ):
                out = sae(batch)
                where = f"step {self.global_step + 1} (epoch {epoch})"
                check_finite_loss(out.loss, where, hint)
                self.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                sae.remove_decoder_parallel_grad_()
                grad_norm = torch.nn.utils.clip_grad_norm_(sae.parameters(), args.max_grad_norm)
                check_finite_loss(grad_norm, f"{where} (gradient norm)", hint)
                self.optimizer.step()
                self.scheduler.step()
                sae.normalize_decoder_()
                fired = (out.feature_acts.detach() != 0).any(0)
                self.steps_since_fired = torch.where(fired, 0, self.steps_since_fired + 1)
                self.global_step += 1
                progress.update(1)
                if self.global_step % args.logging_steps == 0:
                    record = {
                        "step": self.global_step, "epoch": epoch, "loss": out.loss.item(), "mse": out.mse_loss.item(),
                        "l1": out.l1_loss.item(), "l0": out.l0.item(), "lr": self.scheduler.get_last_lr()[0],
                        "dead_fraction": float((self.steps_since_fired >= args.dead_feature_window).float().mean()),
                    }
                    self._log(record)
                    logger.info("SAE step %d: %s", self.global_step, record)
            sae.eval()
            metrics = evaluate_sae(sae, self._eval_batches()) if args.eval_fraction > 0 else {}
            sae.train()
            metrics["epoch"] = epoch
            self._log({"eval": metrics, "step": self.global_step})
            logger.info("SAE epoch %d held-out metrics: %s", epoch, metrics)
            self._save_checkpoint(epoch, metrics)
        progress.close()
        sae.eval()
        _check_finite_weights(sae, f"the end of training (step {self.global_step})")
        save_pretrained_atomic(sae, self.output_dir)
        metrics_path = self.output_dir / "metrics.json"
        if not metrics and metrics_path.is_file():  # nothing new to report: keep what an earlier run wrote
            return json.loads(metrics_path.read_text())
        write_json_atomic(metrics_path, metrics)
        return metrics
