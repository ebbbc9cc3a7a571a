"""The torch training loop behind the torch MLPs' ``fit`` (imported only when fitting)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from shared.torch_mlp import FitReport, Objective, examples_per_second, now, resolve_device

if TYPE_CHECKING:
    from shared.torch_mlp import Array, _TorchMLP

Layers = list[tuple[Any, Any]]


def build_network(inputs: int, hidden: tuple[int, ...], outputs: int) -> nn.Sequential:
    """Linear → ReLU blocks, then a linear layer of logits."""
    layers: list[nn.Module] = []
    width = inputs
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


def fit_mlp(
    params: _TorchMLP, x: Array, y: Array, objective: Objective
) -> tuple[Layers, FitReport]:
    """Train with AdamW and early stopping; return numpy (weight, bias) per layer and a report."""
    device = torch.device(resolve_device(params.device))
    torch.manual_seed(params.seed)
    target = torch.float32 if objective.regression else torch.long
    x_fit, y_fit, x_val, y_val = _split(x, y, params, device, target)
    network = build_network(x.shape[1], tuple(params.hidden), objective.outputs).to(device)
    optimiser = torch.optim.AdamW(
        network.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    amp = params.mixed_precision and device.type == "cuda"
    started = now()
    fit = _Fit(params, _loss_of(objective), amp)
    best, epochs = _train_epochs(network, optimiser, (x_fit, y_fit, x_val, y_val), fit)
    seconds = now() - started
    network.load_state_dict(best.state)
    report = FitReport(
        device=_device_name(device),
        mixed_precision=amp,
        epochs=epochs,
        best_epoch=best.epoch,
        best_validation_loss=best.loss,
        seconds=seconds,
        examples_per_s=examples_per_second(len(x_fit), epochs, seconds),
    )
    return _numpy_layers(network), report


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _loss_of(objective: Objective) -> Loss:
    """Cross entropy on logits, or mean squared error on the single output column."""
    if not objective.regression:
        return nn.functional.cross_entropy

    def squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # In float32 even under bf16 autocast: squared errors lose too much in bf16.
        return nn.functional.mse_loss(out[:, 0].float(), y)

    return squared_error


class _Fit(NamedTuple):
    """How one fit trains: its hyperparameters, loss and whether it uses mixed precision."""

    params: _TorchMLP
    loss: Loss
    amp: bool


class _Best:
    """The best state seen so far by validation loss."""

    def __init__(self, network: nn.Module) -> None:
        self.loss = math.inf
        self.epoch = 0
        self.state = {k: v.detach().clone() for k, v in network.state_dict().items()}

    def offer(self, network: nn.Module, loss: float, epoch: int) -> bool:
        """Keep ``network``'s weights when ``loss`` improves; True when it did."""
        if loss >= self.loss:
            return False
        self.loss, self.epoch = loss, epoch
        self.state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        return True


def _train_epochs(
    network: nn.Module,
    optimiser: torch.optim.Optimizer,
    data: tuple[torch.Tensor, ...],
    fit: _Fit,
) -> tuple[_Best, int]:
    x_fit, y_fit, x_val, y_val = data
    params = fit.params
    best, stale, epoch = _Best(network), 0, 0
    scaler = torch.amp.GradScaler("cuda", enabled=fit.amp)
    generator = torch.Generator(device="cpu").manual_seed(params.seed)
    for epoch in range(1, params.max_epochs + 1):
        order = torch.randperm(len(x_fit), generator=generator).to(x_fit.device)
        for start in range(0, len(order), params.batch_size):
            batch = order[start : start + params.batch_size]
            _step(network, optimiser, scaler, x_fit[batch], y_fit[batch], fit)
        loss = _validation_loss(network, x_val, y_val, fit)
        if not math.isfinite(loss):
            raise FloatingPointError(f"validation loss is {loss} at epoch {epoch}")
        stale = 0 if best.offer(network, loss, epoch) else stale + 1
        if stale >= params.patience:
            break
    return best, epoch


def _step(
    network: nn.Module,
    optimiser: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    y: torch.Tensor,
    fit: _Fit,
) -> None:
    optimiser.zero_grad(set_to_none=True)
    with _autocast(fit.amp):
        loss = fit.loss(network(x), y)
    scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
    scaler.step(optimiser)
    scaler.update()


@torch.no_grad()
def _validation_loss(network: nn.Module, x: torch.Tensor, y: torch.Tensor, fit: _Fit) -> float:
    with _autocast(fit.amp):
        out = network(x)
    return float(fit.loss(out.float(), y))


def _autocast(amp: bool) -> contextlib.AbstractContextManager[Any]:
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


def _split(
    x: Array, y: Array, params: _TorchMLP, device: torch.device, target: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded share of rows for early stopping; all four tensors already on ``device``."""
    order = np.random.default_rng(params.seed).permutation(len(x))
    cut = max(1, int(len(x) * params.validation_fraction))
    val, fit = order[:cut], order[cut:]

    def on(a: Array, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dtype).to(device)

    return (
        on(x[fit], torch.float32),
        on(y[fit], target),
        on(x[val], torch.float32),
        on(y[val], target),
    )


def _numpy_layers(network: nn.Sequential) -> Layers:
    linears = [m for m in network if isinstance(m, nn.Linear)]
    return [
        (
            m.weight.detach().float().cpu().numpy().T.copy(),
            m.bias.detach().float().cpu().numpy().copy(),
        )
        for m in linears
    ]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"
