"""A network written the way published RAW low-light networks often are, for
docs/published-networks.md: its first op is a reflect pad, it returns RGB, a denoised packed raw and
a confidence map nobody supervises (a head of its own), and it calls an einops-style function torch.fx cannot trace.
The harness takes it unedited (configfile/published_example.yaml):

    model:
      name: examples.published_style_net:PublishedStyleNet
      fx_wrap: [examples.published_style_net.merge_windows]   # keep the untraceable call whole
"""
import torch.nn as nn
import torch.nn.functional as F


def merge_windows(tensor, pattern, **sizes):
    """An einops-style rearrangement: like einops.rearrange it checks shapes in Python, which torch.fx
    cannot trace (a traced shape is not a number)."""
    if pattern != "b (c p1 p2) h w -> b c (h p1) (w p2)":
        raise NotImplementedError(pattern)
    if tensor.shape[1] % (sizes["p1"] * sizes["p2"]):
        raise ValueError(f"{tensor.shape[1]} channels do not split into {sizes['p1']}x{sizes['p2']} windows")
    return F.pixel_shuffle(tensor, sizes["p1"])


class PublishedStyleNet(nn.Module):
    input_kind = "packed"  # (B,4,H/2,W/2), SID's pack_raw
    outputs = ("rgb", "raw", "ignore")  # the confidence map has no target

    def __init__(self, channels: int = 16):
        super().__init__()
        self.head = nn.Conv2d(4, channels, 3)  # no padding of its own: the reflect pad supplies it
        self.head_act = nn.LeakyReLU(0.2)
        self.body = nn.Conv2d(channels, channels, 3, padding=1)
        self.body_act = nn.LeakyReLU(0.2)
        self.attention = nn.Conv2d(channels, 1, 1)
        self.confidence = nn.Conv2d(channels, 1, 1)
        self.raw_out = nn.Conv2d(channels, 4, 3, padding=1)
        self.rgb_out = nn.Conv2d(channels, 12, 3, padding=1)

    def forward(self, packed):
        features = self.head_act(self.head(F.pad(packed, (1, 1, 1, 1), mode="reflect")))
        features = features + self.body_act(self.body(features))
        attention = self.attention(features).sigmoid()
        features = features * attention
        rgb = merge_windows(self.rgb_out(features), "b (c p1 p2) h w -> b c (h p1) (w p2)", p1=2, p2=2)
        return rgb, packed + self.raw_out(features), self.confidence(features).sigmoid()
