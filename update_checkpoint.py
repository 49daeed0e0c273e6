"""Load a checkpoint into a model whose architecture has changed since it was saved.

    from update_checkpoint import update_checkpoint
    report = update_checkpoint(discriminator, state["model_state_dict"], optim_d, state["optimizer_state_dict"])
    print(report.summary())

Tensors whose name and shape still match are loaded; new layers keep their fresh initialization;
tensors the model no longer has are dropped. The optimizer's state is loaded when it still fits the
parameters, and reset otherwise. piano_main.py uses this for the discriminator when the config says
update_discriminator: true.
"""

from dataclasses import dataclass, field


@dataclass
class UpdateReport:
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)  # in the model, not in the checkpoint: newly initialized
    unexpected: list = field(default_factory=list)  # in the checkpoint, not in the model: dropped
    mismatched: list = field(default_factory=list)  # both, but of another shape: newly initialized
    optimizer_reset: bool = False

    def summary(self):
        lines = [f"loaded {len(self.loaded)} tensors from the checkpoint"]
        if self.missing:
            lines.append(f"new in the model, initialized fresh: {', '.join(self.missing)}")
        if self.mismatched:
            lines.append(f"shape changed, initialized fresh: {', '.join(self.mismatched)}")
        if self.unexpected:
            lines.append(f"no longer in the model, dropped: {', '.join(self.unexpected)}")
        lines.append("optimizer state reset (it no longer fits the parameters)" if self.optimizer_reset
                     else "optimizer state loaded")
        return "\n".join(lines)


def update_checkpoint(model, state_dict, optimizer=None, optimizer_state=None):
    """Load what still fits of state_dict into model (and optimizer_state into optimizer); return a report."""
    own = model.state_dict()
    report = UpdateReport()
    fitting = {}
    for name, tensor in state_dict.items():
        if name not in own:
            report.unexpected.append(name)
        elif own[name].shape != tensor.shape:
            report.mismatched.append(name)
        else:
            fitting[name] = tensor
            report.loaded.append(name)
    report.missing = [name for name in own if name not in state_dict]
    model.load_state_dict(fitting, strict=False)
    if optimizer is not None and optimizer_state is not None:
        changed = bool(report.missing or report.unexpected or report.mismatched)
        if changed:
            report.optimizer_reset = True  # Adam's moments are indexed by position: after a change they belong to other tensors
        else:
            try:
                optimizer.load_state_dict(optimizer_state)
            except (ValueError, KeyError, RuntimeError):
                report.optimizer_reset = True
    return report
