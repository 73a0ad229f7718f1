"""`xlsr plan`: memory, speed, cost, data passes and loader cores of a run before it is launched.

- `memory`: the peak of one rank (states by backend, activations from `xlsr.model.activations`);
- `speed`: time per update and for the run at a measured, given or default MFU;
- `data`: shares, hours seen and passes per (corpus, language); audio per micro-batch;
- `loader`: decode rate (a short benchmark over the shards) → cores per GPU, storage bandwidth;
- `request`: what is asked (`PlanRequest`) and the defaults, torch-free;
- `build.make_plan` puts them together; `report` renders text, a summary paragraph and JSON.
"""

import importlib

# Imported on first use (PEP 562): the command line's parser imports `xlsr.plan.request` without torch.
_EXPORTS = {
    "Plan": "xlsr.plan.build",
    "make_plan": "xlsr.plan.build",
    "PlanRequest": "xlsr.plan.request",
    "PlanError": "xlsr.plan.errors",
    "plan_json": "xlsr.plan.report",
    "plan_text": "xlsr.plan.report",
    "summary_paragraph": "xlsr.plan.report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xlsr.plan' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
