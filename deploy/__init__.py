"""Deployment: ONNX export (full precision and QDQ) of trained and quantized networks."""
from deploy.onnx_export import (FP_FILE, QDQ_FILE, REPORT_FILE, ExportInfo, describe_quantizers, export_full_precision,
                                export_model, export_qdq, psnr_db, required_opset, write_report)
from deploy.quantizers import ExportError, QuantSpec


__all__ = ["ExportError", "ExportInfo", "QuantSpec", "describe_quantizers", "export_full_precision", "export_model",
           "export_qdq", "psnr_db", "required_opset", "write_report", "FP_FILE", "QDQ_FILE", "REPORT_FILE"]
