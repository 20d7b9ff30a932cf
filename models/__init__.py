"""Networks chosen by `model.name` in the config."""
from models.dbf_dble import DBFDBLE
from models.sid_unet import SIDUNet

MODELS = {"dbf_dble": DBFDBLE, "sid_unet": SIDUNet}


def build_model(name: str, width: float = 1.0):
    if name not in MODELS:
        raise ValueError(f"model.name: unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](width=width)


def input_kind(name: str) -> str:
    """'mosaic' or 'packed': what the data loader must give the network, without building it."""
    return MODELS[name].input_kind


def split_outputs(outputs):
    """(mono or None, rgb) whatever the network returns: DBF/DBLE gives both, the U-Net RGB only."""
    if isinstance(outputs, (tuple, list)):
        return outputs[0], outputs[1]
    return None, outputs
