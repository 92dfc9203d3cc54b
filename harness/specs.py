"""The op records every command and test is generated from: ``SPECS`` maps an op's name to
its record (harness.opspec.OpSpec). The records live in harness/ops/ (one module per op
family); this module is the one name the rest of the harness reads them by."""
from __future__ import annotations

from .ops import MUTANT_CATALOGUE, REGISTRY as SPECS
from .opspec import OpSpec, OutputSpec, Sample

__all__ = ["SPECS", "MUTANT_CATALOGUE", "OpSpec", "OutputSpec", "Sample"]
