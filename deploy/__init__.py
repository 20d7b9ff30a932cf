"""Deployment: ONNX export (full precision and QDQ) of trained and quantized networks."""
from deploy.onnx_export import (FP_FILE, QDQ_FILE, REPORT_FILE, ExportInfo, describe_quantizers, export_full_precision,
                                export_model, export_qdq, psnr_db, required_opset, write_report)
from deploy.quantizers import ExportError, QuantSpec


def export_run(*args, **kwargs):
    # Imported on use: it pulls in the config, data and quant packages, which export alone does not need.
    from deploy.run import export_run as run
    return run(*args, **kwargs)


__all__ = ["ExportError", "ExportInfo", "QuantSpec", "describe_quantizers", "export_full_precision", "export_model",
           "export_qdq", "export_run", "psnr_db", "required_opset", "write_report", "FP_FILE", "QDQ_FILE", "REPORT_FILE"]
