"""What a network may take as input, shared by the data sets (data/sid.py builds it) and the model
contract (models/contract.py checks a network's declaration), neither of which may import the other."""

# mosaic: the Bayer mosaic at full resolution, one channel; packed: its 2x2 cells as four channels
# at half resolution.
INPUT_KINDS = ("mosaic", "packed")
