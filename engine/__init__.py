"""The Lightning runtime every task shares: the task base class (``TaskModule``), the command
line (``run_task_cli``), export with runtime parity (``TaskExport``, ``run_export``),
checkpoint I/O and checks, the non-finite step guard, exact resume, the host-memory policy,
the DDP evaluation rule and the prediction writer."""

from .cli import TaskCLI, run_task_cli
from .export import TaskExport, export_onnx, run_export
from .parity import Parity
from .task import TaskModule, parameter_groups

__all__ = ["Parity", "TaskCLI", "TaskExport", "TaskModule", "export_onnx", "parameter_groups", "run_export", "run_task_cli"]
