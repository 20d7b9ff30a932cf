"""Deployment: ONNX export (full precision and QDQ) of trained and quantized networks."""
from deploy.onnx_build import describe_quantizers, required_opset
from deploy.onnx_export import export_full_precision, export_model, export_qdq
from deploy.onnx_report import FP_FILE, QDQ_FILE, REPORT_FILE, ExportInfo, write_report
from deploy.onnx_verify import psnr_db
from deploy.quantizers import ExportError, QuantSpec


__all__ = ["ExportError", "ExportInfo", "QuantSpec", "describe_quantizers", "export_full_precision", "export_model",
           "export_qdq", "psnr_db", "required_opset", "write_report", "FP_FILE", "QDQ_FILE", "REPORT_FILE"]
