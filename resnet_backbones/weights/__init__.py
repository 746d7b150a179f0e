"""Weights in: safe loading, family detection, conversion to Detectron2 names, strict reports."""
from .convert import (
    DEFAULT_CONVENTIONS,
    METADATA_KEY,
    MSRA_CONVENTION,
    TORCHVISION_CONVENTION,
    ConversionReport,
    InputConvention,
    check_against_arch,
    convert_state_dict,
    convert_weights,
    infer_arch,
)
from .checkpoint import BackboneCheckpointer, ConventionMismatchWarning, convention_mismatches
from .io import WeightsError, atomic_output, load_weights_file
from .naming import SOURCES, detect_source, rename_state_dict

__all__ = [
    "BackboneCheckpointer", "ConventionMismatchWarning", "convention_mismatches",
    "DEFAULT_CONVENTIONS", "METADATA_KEY", "MSRA_CONVENTION", "TORCHVISION_CONVENTION", "ConversionReport",
    "InputConvention", "SOURCES", "WeightsError", "atomic_output", "check_against_arch", "convert_state_dict",
    "convert_weights", "detect_source", "infer_arch", "load_weights_file", "rename_state_dict",
]
