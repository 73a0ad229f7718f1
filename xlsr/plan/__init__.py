"""`xlsr plan`: memory, speed, cost, data passes and loader cores of a run before it is launched.

- `memory`: the peak of one rank (states by backend, activations from `xlsr.model.activations`);
- `speed`: time per update and for the run at a measured, given or default MFU;
- `data`: shares, hours seen and passes per (corpus, language); audio per micro-batch;
- `loader`: decode rate (a short benchmark over the shards) → cores per GPU, storage bandwidth;
- `build.make_plan` puts them together; `report` renders text, a summary paragraph and JSON.
"""

from xlsr.plan.build import Plan, PlanRequest, make_plan
from xlsr.plan.errors import PlanError
from xlsr.plan.report import plan_json, plan_text, summary_paragraph

__all__ = ["Plan", "PlanError", "PlanRequest", "make_plan", "plan_json", "plan_text", "summary_paragraph"]
