"""The ROS-free core of sage_irp_ros.

The plugin contract, the refinement loop, halting, trust, telemetry and ATP budgets. Nothing
under this package imports rclpy or any ROS type.
"""

from sage_irp_ros.core.budget import Budget, StepCostMeter
from sage_irp_ros.core.loop import HaltConfig, RefineResult, Trace, refine, refine_batch
from sage_irp_ros.core.plugin import (
    HALT_BUDGET,
    HALT_CONFIDENT,
    HALT_ERROR,
    HALT_FEASIBLE,
    HALT_MANUAL,
    HALT_MAX_STEPS,
    HALT_REASONS,
    HALT_SLOPE,
    HALT_STABLE,
    HALT_TIMEOUT,
    PLUGIN_KINDS,
    IRPPlugin,
    IRPState,
    Schedule,
)
from sage_irp_ros.core.telemetry import (
    JsonlSink,
    RunInfo,
    TelemetryError,
    make_record,
    process_memory_mb,
    schema_path,
    validate_record,
)
from sage_irp_ros.core.trust import TrustMetrics, trust_metrics

__all__ = [
    'Budget', 'StepCostMeter', 'HaltConfig', 'RefineResult', 'Trace', 'refine', 'refine_batch',
    'HALT_BUDGET', 'HALT_CONFIDENT', 'HALT_ERROR', 'HALT_FEASIBLE', 'HALT_MANUAL',
    'HALT_MAX_STEPS', 'HALT_REASONS', 'HALT_SLOPE', 'HALT_STABLE', 'HALT_TIMEOUT',
    'IRPPlugin', 'IRPState', 'PLUGIN_KINDS', 'Schedule', 'JsonlSink', 'RunInfo', 'TelemetryError',
    'make_record', 'process_memory_mb', 'schema_path', 'validate_record', 'TrustMetrics',
    'trust_metrics',
]
