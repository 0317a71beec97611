"""Export of trained checkpoints to other ecosystems (Hugging Face `transformers`)."""

from scaling.export.hf import ExportError, architecture, hf_config, hf_tensors
from scaling.export.run import ExportResult, export_run

__all__ = ["ExportError", "ExportResult", "architecture", "export_run", "hf_config", "hf_tensors"]
