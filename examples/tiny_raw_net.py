"""A small RAW low-light network written outside models/, used through the plug-in path:

    model:
      name: examples.tiny_raw_net:TinyRawNet
      kwargs: {channels: 32}

A three-level U-Net on the packed mosaic with a channel-attention skip: 470k parameters at the
default 32 channels. It follows models/contract.py: it takes the Bayer mosaic (input_kind) and
returns RGB only (outputs); packing happens inside, as in DBF/DBLE.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by its own LeakyReLU (distinct names, easy to cite)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.act1 = nn.LeakyReLU(0.2)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act2 = nn.LeakyReLU(0.2)

    def forward(self, x):
        return self.act2(self.conv2(self.act1(self.conv1(x))))


class ChannelAttention(nn.Module):
    def __init__(self, channels, reduction=8):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.squeeze = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1),
                                     nn.Sigmoid())

    def forward(self, x):
        return x * self.squeeze(self.pool(x))


class TinyRawNet(nn.Module):
    """RAW mosaic (B,1,H,W) -> RGB (B,3,H,W); H and W multiples of 8."""

    input_kind = "mosaic"
    outputs = ("rgb",)

    def __init__(self, channels=32):
        super().__init__()
        c = channels
        self.encoder1 = ConvBlock(4, c)
        self.encoder2 = ConvBlock(c, 2 * c)
        self.bottleneck = ConvBlock(2 * c, 4 * c)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.attention2 = ChannelAttention(4 * c)
        self.decoder2 = ConvBlock(4 * c, 2 * c)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.decoder1 = ConvBlock(2 * c, c)
        self.head = nn.Conv2d(c, 12, 1)
        self.to_rgb = nn.PixelShuffle(2)

    def forward(self, mosaic):
        packed = F.pixel_unshuffle(mosaic, 2)  # RGGB -> 4 channels at half resolution
        skip1 = self.encoder1(packed)
        skip2 = self.encoder2(self.pool(skip1))
        x = self.bottleneck(self.pool(skip2))
        x = self.decoder2(self.attention2(torch.cat([self.up2(x), skip2], 1)))
        x = self.decoder1(torch.cat([self.up1(x), skip1], 1))
        return self.to_rgb(self.head(x))
