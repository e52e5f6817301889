"""Training K models at once: per-model seeds, subsets, batch orders, masks and learning rates.

Convention: each epoch a model visits its subset in a fresh random order and DROPS the last
partial batch, so every step sees exactly `batch_size` examples (a 2-example step at lr 0.1 with
momentum visibly hurts; see the C-score issue). A subset smaller than one batch is an error.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.sgd import sgd
from tqdm.auto import tqdm

from core.stopping import check_stop
from core.training.config import TrainConfig, lr_at
from core.training.ensemble import Ensemble, example_outcomes
from core.training.hooks import TrainingHooks

FUSED_SGD_DEVICES = ("cpu", "cuda")  # where torch's fused SGD kernel exists


class StackedSGD:
    """torch.optim.SGD's update (momentum, weight decay) applied to `[K, ...]` tensors with per-model lr."""

    def __init__(self, params: dict[str, Tensor], config: TrainConfig, masks: dict[str, Tensor] | None = None):
        self.params, self.config = params, config
        self.masks = {n: m.to(p.device, p.dtype) for n, m in (masks or {}).items() for p in [params[n]]}
        self.momentum = {n: torch.zeros_like(p) for n, p in params.items()}

    @torch.no_grad()
    def step(self, lr: Tensor, active: Tensor | None = None, shared_lr: Tensor | None = None) -> None:
        """One update; models with `active[k] == False` are left exactly as they were.

        When all models are active and share one learning rate (`shared_lr`, a 0-d tensor: models of equal
        subsets): torch's fused SGD, one pass over each parameter, its gradient and momentum (about 2x faster than
        the three foreach passes, which read and write every parameter three times a step).
        When all are active with their own rates: foreach ops in place, one call per stage for all
        parameters, no extra multi-MB tensors; the gradients (dropped after the step anyway) become
        the new momentum buffers.
        """
        params = list(self.params.values())
        grads = [p.grad for p in params]
        for name, mask in self.masks.items():
            self.params[name].grad.mul_(mask)  # masked weights get no update, so they stay exactly zero
        if active is None and shared_lr is not None and params[0].device.type in FUSED_SGD_DEVICES:
            sgd(params, grads, list(self.momentum.values()), fused=True, weight_decay=self.config.weight_decay,
                momentum=self.config.momentum, lr=shared_lr, dampening=0.0, nesterov=False, maximize=False)
            for p in params:
                p.grad = None
            return
        if self.config.weight_decay:
            torch._foreach_add_(grads, params, alpha=self.config.weight_decay)  # SGD's grad + wd * p
        if active is None:
            torch._foreach_add_(grads, list(self.momentum.values()), alpha=self.config.momentum)
            buffers = grads  # momentum * buf + grad
        else:
            buffers = [
                torch.where(_per_model(active, buf), buf * self.config.momentum + grad, buf)
                for buf, grad in zip(self.momentum.values(), grads)
            ]
            lr = lr * active
        self.momentum = dict(zip(self.momentum, buffers))
        torch._foreach_addcmul_(params, buffers, [_per_model(lr, p) for p in params], value=-1)
        for p in params:
            p.grad = None


def _per_model(values: Tensor, like: Tensor) -> Tensor:
    """`[K]` values viewed to broadcast over a `[K, ...]` tensor."""
    return values.view((-1,) + (1,) * (like.dim() - 1))


def _lr_table(config: TrainConfig, steps_per_epoch: Tensor) -> Tensor:
    """`[epochs, max steps, K]` learning rate of every model's every step (0 where a model idles).

    Computed once per distinct epoch length instead of K Python calls per training step.
    """
    epochs, k = config.epochs, len(steps_per_epoch)
    table = torch.zeros(epochs, int(steps_per_epoch.max()), k, dtype=torch.float64)
    for n in steps_per_epoch.unique().tolist():
        schedule = torch.tensor([lr_at(config, step, n) for step in range(epochs * n)], dtype=torch.float64)
        table[:, :n, steps_per_epoch == n] = schedule.view(epochs, n, 1)
    return table


def _rows(t: Tensor, idx: Tensor) -> Tensor:
    """`t[idx]` for a `[K, B]` index; index_select on the flat index is several times faster on the CPU."""
    return t.index_select(0, idx.flatten()).view(*idx.shape, *t.shape[1:])


@dataclass
class TrainingRecord:
    """Per model, epoch and training example, measured on the minibatch before its update.

    Each tensor is `[K, epochs, N]` over the whole training set; NaN / False where the example
    was not in the model's subset (or fell in the dropped partial batch that epoch).
    """

    label_prob: Tensor
    correct: Tensor
    margin: Tensor
    loss: Tensor
    el2n: Tensor  # |softmax - one-hot label|_2 (Paul et al. 2021)
    seen: Tensor  # bool


@dataclass
class TrainResult:
    """What training returns besides the trained ensemble itself."""

    steps: Tensor  # [K] updates made per model
    record: TrainingRecord | None = None
    losses: Tensor | None = None  # [K, epochs] mean minibatch loss of each model in each epoch
    snapshot: dict[str, Tensor] | None = None  # parameters and buffers after `snapshot_step` updates of each model


def _epoch_order(members: list[Tensor], generators: list[torch.Generator], batch: int) -> tuple[Tensor, Tensor]:
    """`[K, S, B]` example indices for one epoch and `[K]` real steps per model (shorter ones padded)."""
    steps = torch.tensor([len(m) // batch for m in members])
    order = torch.empty(len(members), int(steps.max()), batch, dtype=torch.long)
    for k, (m, g) in enumerate(zip(members, generators)):
        chosen = m[torch.randperm(len(m), generator=g)][: steps[k] * batch].view(-1, batch)
        order[k, : steps[k]] = chosen
        order[k, steps[k] :] = chosen[-1]  # padding steps are computed but never applied
    return order, steps


def _new_record(k: int, epochs: int, n: int, device) -> TrainingRecord:
    """An empty record: NaN everywhere, nothing seen."""
    nan = lambda: torch.full((k, epochs, n), float("nan"), device=device)  # noqa: E731
    zeros = lambda: torch.zeros(k, epochs, n, dtype=torch.bool, device=device)  # noqa: E731
    return TrainingRecord(label_prob=nan(), correct=zeros(), margin=nan(), loss=nan(), el2n=nan(), seen=zeros())


def _write_record(record: TrainingRecord, epoch: int, idx: Tensor, outcomes, rows: Tensor | None) -> None:
    """Store one step's per-example outcomes (only for models that really took this step)."""
    targets = (record.correct, record.label_prob, record.margin, record.loss, record.el2n)
    model_axis = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1).expand_as(idx)
    if rows is not None:
        idx, model_axis, outcomes = idx[rows], model_axis[rows], [o[rows] for o in outcomes]
    for target, values in zip(targets, outcomes):
        target[:, epoch][model_axis, idx] = values.to(target.dtype)
    record.seen[:, epoch][model_axis, idx] = True


def _restore_idle(buffers: dict[str, Tensor], saved: dict[str, Tensor], active: Tensor | None) -> None:
    """Undo buffer updates (e.g. BatchNorm running stats) of models that only idled through this step."""
    for name, before in saved.items():
        keep = active.to(before.device).view((-1,) + (1,) * (before.dim() - 1))
        buffers[name].copy_(torch.where(keep, buffers[name], before))


def _snapshot_rows(ensemble: Ensemble, snapshot: dict[str, Tensor] | None, rows: Tensor) -> dict[str, Tensor]:
    """`snapshot` (zeros when None) with the models in `rows` (bool `[K]`) set to their current state."""
    state = ensemble.state()
    snapshot = snapshot if snapshot is not None else {n: torch.zeros_like(t) for n, t in state.items()}
    for name, value in state.items():
        snapshot[name][rows] = value[rows]
    return snapshot


def _check_step(name: str, value: int, first: int, last: int) -> None:
    """`value` must be an update count between `first` and `last`, or the error names the argument."""
    if not first <= value <= last:
        raise ValueError(f"{name}={value} must lie between {first} and the last update ({last})")


def train(
    ensemble: Ensemble,
    x: Tensor,
    y: Tensor,
    subsets: Tensor,
    order_seeds: list[int],
    config: TrainConfig,
    masks: dict[str, Tensor] | None = None,
    record: bool = False,
    progress: bool = False,
    snapshot_step: int | None = None,
    start_step: int = 0,
    lr_scale: Tensor | None = None,
    hooks: TrainingHooks | None = None,
) -> TrainResult:
    """Train every model k of `ensemble` on the examples where `subsets[k]` (bool `[K, N]`) is True.

    With `snapshot_step` = r, the result keeps each model's state after its own r-th update (r = 0:
    the initial state), the rewind point of lottery-ticket style pruning.
    With `start_step` = k, each model's state is taken to be the one after its own first k updates
    (a rewind point): training goes on from update k at the same place in the learning-rate schedule
    and in the batch order as an uninterrupted run, for the remaining updates (open_lth's rewinding).
    Momentum starts from zero, as with a fresh optimizer.
    With `lr_scale` (`[K]`), model k's learning rate is `lr_scale[k]` times the schedule's (a sweep of
    learning rates in one pass).
    With `hooks` (core.training.hooks.TrainingHooks, whose docstring says when each runs), a method adds its
    per-step draws (`step`), a term of each model's loss (`regularizer`; `losses` still holds the cross-entropy
    alone) and per-epoch work (`epoch`) without the trainer naming it.
    """
    hooks = hooks or TrainingHooks()
    device = ensemble.device
    x, y = x.to(device), y.to(device)
    members = [row.nonzero().squeeze(1) for row in subsets.cpu()]
    too_small = [k for k, m in enumerate(members) if len(m) < config.batch_size]
    if too_small:
        raise ValueError(
            f"train.batch_size={config.batch_size} is larger than the training subset of model(s) {too_small} "
            f"(smallest has {min(len(members[k]) for k in too_small)} examples); lower batch_size or enlarge the subsets"
        )
    steps_per_epoch = torch.tensor([len(m) // config.batch_size for m in members])
    last = int((config.epochs * steps_per_epoch).min())
    _check_step("start_step", start_step, 0, last)
    if snapshot_step is not None:
        _check_step("snapshot_step", snapshot_step, start_step, last)
    for name, mask in (masks or {}).items():
        with torch.no_grad():
            ensemble.params[name].mul_(mask.to(device))  # masked weights start, and so stay, exactly zero
    optimizer = StackedSGD(ensemble.params, config, masks)
    generators = [torch.Generator().manual_seed(int(s)) for s in order_seeds]
    lr_table = _lr_table(config, steps_per_epoch)
    if lr_scale is not None:
        if lr_scale.shape != (ensemble.size,):
            raise ValueError(f"lr_scale has shape {list(lr_scale.shape)}; it needs one factor per model: [{ensemble.size}]")
        lr_table *= lr_scale.to(lr_table.dtype).cpu()
    shared_lr = bool((lr_table == lr_table[..., :1]).all())  # every model on one schedule: one rate per step
    lr_table = lr_table.to(device, next(iter(ensemble.params.values())).dtype)
    result, epoch_losses = TrainResult(steps=config.epochs * steps_per_epoch - start_step), []
    if record:
        result.record = _new_record(ensemble.size, config.epochs, len(x), device)
    if snapshot_step == start_step:
        result.snapshot = ensemble.state()
    bar = tqdm(total=int(result.steps.max()), disable=not progress, unit="step", leave=False)
    for epoch in range(config.epochs):
        order, steps = _epoch_order(members, generators, config.batch_size)  # drawn even when skipped: later
        order = order.to(device)  # epochs' orders come from the same generators
        first = (start_step - epoch * steps_per_epoch).clamp(min=0)  # each model's first step of this epoch
        everyone = range(int(first.max()), int(steps.min()))  # steps every model takes: the fast, common case
        epoch_loss = torch.zeros(ensemble.size, device=device)
        for s in range(int(first.min()), order.shape[1]):
            check_stop()
            takes = (first <= s) & (s < steps)
            if not takes.any():
                continue
            active = None if s in everyone else takes.to(device)
            idx = order[:, s]
            xb, yb = _rows(x, idx), _rows(y, idx)
            saved = {n: b.clone() for n, b in ensemble.buffers.items()} if active is not None else {}
            if hooks.step is not None:
                hooks.step(takes)
            logits = ensemble(xb, train=True)
            # classes on dim 1: log-softmax over a contiguous dim of 10 classes is ~10x slower on the CPU
            per_model = F.cross_entropy(logits.transpose(1, 2), yb, reduction="none").mean(1)
            per_model = per_model if active is None else per_model * active
            if hooks.regularizer is None:
                per_model.sum().backward()
            else:
                extra = hooks.regularizer(ensemble.params)
                (per_model + (extra if active is None else extra * active)).sum().backward()
            _restore_idle(ensemble.buffers, saved, active)  # after backward, which may still read them
            if record:
                _write_record(result.record, epoch, idx, example_outcomes(logits.detach(), yb), active)
            optimizer.step(lr_table[epoch, s], active, lr_table[epoch, s, 0] if shared_lr else None)
            if snapshot_step and snapshot_step > start_step:  # models whose update count just reached it
                reached = (epoch * steps_per_epoch + s + 1 == snapshot_step) & takes
                if reached.any():
                    result.snapshot = _snapshot_rows(ensemble, result.snapshot, reached.to(device))
            epoch_loss += per_model.detach()
            bar.update(1)
        epoch_losses.append(epoch_loss.cpu() / (steps - first).clamp(min=0))  # NaN for an epoch a model skipped
        if hooks.epoch is not None:
            hooks.epoch(epoch)
    bar.close()
    result.losses = torch.stack(epoch_losses, dim=1)
    if record:
        result.record = TrainingRecord(*(t.cpu() for t in vars(result.record).values()))
    return result
