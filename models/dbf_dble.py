"""The dual-branch network of "Abandoning the Bayer-Filter to See in the Dark" (CVPR 2022).

Module names are the state_dict prefixes of the authors' checkpoint (`SID_weights_690000.pth`), so
it loads with strict=True. `width` scales every channel count (1.0 = the published network); tests
use narrow versions to stay fast on CPU, and key names do not change with it.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _channels(base, width):
    return max(1, int(round(base * width)))


class Conv_LReLU_2(nn.Module):  # the authors' name, kept for checkpoint keys
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.Conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.Conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # One instance called twice: after FX tracing the second call is `lrelu_dup1`, the name
        # users give in configs for "the output of this block".
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x):
        return self.lrelu(self.Conv2(self.lrelu(self.Conv1(x))))


class CALayer(nn.Module):
    """Channel attention: x scaled by a per-channel weight from its global average."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        hidden = max(1, channels // reduction)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))


def init_weights(module):
    """He initialisation for LeakyReLU(0.2). PyTorch's default (uniform, gain for a=sqrt(5)) shrinks
    activations by about half per layer, so through the ~20 layers of DBF/DBLE a fresh network
    outputs almost zero and spends its first thousands of steps just growing its scale."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(layer.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def downshuffle(x):
    # Exactly pixel_unshuffle by 2: RGGB mosaic -> channels (R, Gr, Gb, B).
    return F.pixel_unshuffle(x, 2)


class DBF(nn.Module):
    """De-Bayer-filter: RAW mosaic (B,1,H,W) -> monochrome image (B,1,H,W)."""

    def __init__(self, width=1.0):
        super().__init__()
        c1, c2, c3, c4, c5 = (_channels(c, width) for c in (8, 16, 32, 64, 128))
        self.DBF_conv1 = Conv_LReLU_2(1, c1)
        self.DBF_conv2 = Conv_LReLU_2(c1, c2)
        self.DBF_conv3 = Conv_LReLU_2(c2, c3)
        self.DBF_conv4 = Conv_LReLU_2(c3, c4)
        self.DBF_conv5 = Conv_LReLU_2(c4, c5)
        self.DBF_upv5 = nn.ConvTranspose2d(c5, c4, 2, stride=2)
        self.DBF_conv6 = Conv_LReLU_2(2 * c4, c4)
        self.DBF_upv6 = nn.ConvTranspose2d(c4, c3, 2, stride=2)
        self.DBF_conv7 = Conv_LReLU_2(2 * c3, c3)
        self.DBF_upv7 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.DBF_conv8 = Conv_LReLU_2(2 * c2, c2)
        self.DBF_upv8 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.DBF_conv9 = Conv_LReLU_2(2 * c1, c1)
        self.DBF_out = nn.Conv2d(c1, 1, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.2)
        self.pool1 = nn.MaxPool2d(2)

    def forward(self, x):
        conv1 = self.DBF_conv1(x)
        conv2 = self.DBF_conv2(self.pool1(conv1))
        conv3 = self.DBF_conv3(self.pool1(conv2))
        conv4 = self.DBF_conv4(self.pool1(conv3))
        conv5 = self.DBF_conv5(self.pool1(conv4))
        conv6 = self.DBF_conv6(torch.cat([self.DBF_upv5(conv5), conv4], 1))
        conv7 = self.DBF_conv7(torch.cat([self.DBF_upv6(conv6), conv3], 1))
        conv8 = self.DBF_conv8(torch.cat([self.DBF_upv7(conv7), conv2], 1))
        conv9 = self.DBF_conv9(torch.cat([self.DBF_upv8(conv8), conv1], 1))
        return self.lrelu(self.DBF_out(conv9))


class DBLE(nn.Module):
    """Dual-branch low-light enhancement: colour mosaic + DBF mono -> 12 channels at H/2."""

    def __init__(self, width=1.0):
        super().__init__()
        c1, c2, c3, c4, c5 = (_channels(c, width) for c in (32, 64, 128, 256, 512))
        for branch in ("color", "mono"):
            setattr(self, f"{branch}_conv1", Conv_LReLU_2(4, c1))
            setattr(self, f"{branch}_conv2", Conv_LReLU_2(c1, c2))
            setattr(self, f"{branch}_conv3", Conv_LReLU_2(c2, c3))
            setattr(self, f"{branch}_conv4", Conv_LReLU_2(c3, c4))
            setattr(self, f"{branch}_conv5", Conv_LReLU_2(c4, c5))
            setattr(self, f"{branch}_up5", nn.ConvTranspose2d(c5, c4, 2, stride=2))
        self.channel_attention6 = CALayer(4 * c4)
        self.dual_conv6 = Conv_LReLU_2(4 * c4, c4)
        self.dual_up6 = nn.ConvTranspose2d(c4, c3, 2, stride=2)
        self.channel_attention7 = CALayer(c3 * 3)
        self.dual_conv7 = Conv_LReLU_2(c3 * 3, c3)
        self.dual_up7 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.channel_attention8 = CALayer(c2 * 3)
        self.dual_conv8 = Conv_LReLU_2(c2 * 3, c2)
        self.dual_up8 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.channel_attention9 = CALayer(c1 * 3)
        self.dual_conv9 = Conv_LReLU_2(c1 * 3, c1)
        self.DBLE_out = nn.Conv2d(c1, 12, 1)
        self.lrelu = nn.LeakyReLU(0.2)
        self.pool1 = nn.MaxPool2d(2)
        self.up2 = nn.PixelShuffle(2)  # unused, but part of the published checkpoint's module tree

    def _encode(self, branch, x):
        conv1 = getattr(self, f"{branch}_conv1")(x)
        conv2 = getattr(self, f"{branch}_conv2")(self.pool1(conv1))
        conv3 = getattr(self, f"{branch}_conv3")(self.pool1(conv2))
        conv4 = getattr(self, f"{branch}_conv4")(self.pool1(conv3))
        conv5 = getattr(self, f"{branch}_conv5")(self.pool1(conv4))
        up5 = getattr(self, f"{branch}_up5")(conv5)
        return conv1, conv2, conv3, conv4, up5

    def forward(self, color, mono):
        c1, c2, c3, c4, c_up5 = self._encode("color", color)
        m1, m2, m3, m4, m_up5 = self._encode("mono", mono)
        x = self.channel_attention6(torch.cat([c_up5, m_up5, c4, m4], 1))
        x = self.dual_up6(self.dual_conv6(x))
        x = self.channel_attention7(torch.cat([x, c3, m3], 1))
        x = self.dual_up7(self.dual_conv7(x))
        x = self.channel_attention8(torch.cat([x, c2, m2], 1))
        x = self.dual_up8(self.dual_conv8(x))
        x = self.channel_attention9(torch.cat([x, c1, m1], 1))
        x = self.dual_conv9(x)
        return self.lrelu(self.DBLE_out(x))


class DBFDBLE(nn.Module):
    """RAW mosaic (B,1,H,W), H and W multiples of 32 -> (mono (B,1,H,W), rgb (B,3,H,W))."""

    input_kind = "mosaic"  # see models/contract.py
    outputs = ("mono", "rgb")

    def __init__(self, width=1.0):
        super().__init__()
        self.DBF = DBF(width)
        self.DBLE = DBLE(width)
        self.up2 = nn.PixelShuffle(2)
        self.lrelu = nn.LeakyReLU(0.2)  # unused; present in the published checkpoint's tree
        init_weights(self)

    def forward(self, x):
        mono = self.DBF(x)
        rgb = self.up2(self.DBLE(downshuffle(x), downshuffle(mono)))
        return mono, rgb
