"""How the monitor windows traffic and decides drift: one configuration for every model."""

from __future__ import annotations

from dataclasses import dataclass

from services.monitor.core.concept import AccuracyCusum
from services.monitor.core.correction import Correction
from services.monitor.core.loss import LossCusum
from services.monitor.core.reference import Reference
from services.monitor.core.window import DriftDetector
from shared.spec import RegressionLoss


@dataclass(frozen=True)
class DriftConfig:
    """Window, alarm and concept-drift parameters (``Settings.to_config()`` builds it)."""

    window_size: int = 1000
    alpha: float = 0.05
    correction: Correction = "bonferroni"
    persistence: int = 2
    strong_alpha: float = 1e-4
    pooled_windows: int = 8
    pooled_alpha: float = 2e-3
    cooldown_windows: int = 10
    reference_refresh_s: float = 30.0
    """How often a model's champion alias is looked up again for a new reference."""
    hold_s: float = 30.0
    """How long a model whose reference failed to load fails at once before a new try."""
    recent_ids: int = 1000
    """Event ids remembered per model: all that a redelivery after a crash can repeat."""
    accuracy_min_drop: float = 0.05
    accuracy_arl: float = 10_000.0
    accuracy_rolling: int = 500
    """Labelled outcomes in the rolling accuracy (or a regressor's rolling loss)."""
    loss_min_rise: float = 0.5
    """Relative rise of a regressor's mean loss its concept-drift CUSUM is tuned to detect."""
    loss_arl: float = 10_000.0
    """Mean outcomes between false loss alarms on an unchanged regressor."""

    def detector(self, reference: Reference) -> DriftDetector:
        """An empty detector against ``reference``."""
        return DriftDetector(
            reference,
            window_size=self.window_size,
            alpha=self.alpha,
            persistence=self.persistence,
            cooldown_windows=self.cooldown_windows,
            correction=self.correction,
            strong_alpha=self.strong_alpha,
            pooled_windows=self.pooled_windows,
            pooled_alpha=self.pooled_alpha,
        )

    def tracker(self, baseline: float) -> AccuracyCusum:
        """A concept-drift CUSUM against the validation accuracy ``baseline``."""
        return AccuracyCusum(
            baseline=baseline,
            min_drop=self.accuracy_min_drop,
            arl=self.accuracy_arl,
            rolling=self.accuracy_rolling,
        )

    def loss_tracker(self, baseline: float, loss: RegressionLoss) -> LossCusum:
        """A regressor's concept-drift CUSUM against its validation mean loss ``baseline``."""
        return LossCusum(
            baseline=baseline,
            loss=loss,
            min_rise=self.loss_min_rise,
            arl=self.loss_arl,
            rolling=self.accuracy_rolling,
        )
