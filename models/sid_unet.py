"""The SID U-Net baseline (Chen et al., "Learning to See in the Dark", CVPR 2018).

Takes the packed 4-channel raw (B,4,H/2,W/2) and returns RGB (B,3,H,W).
"""
import torch
import torch.nn as nn

from models.dbf_dble import Conv_LReLU_2, _channels, init_weights


class SIDUNet(nn.Module):
    input_kind = "packed"  # see models/contract.py
    outputs = ("rgb",)

    def __init__(self, width=1.0):
        super().__init__()
        c1, c2, c3, c4, c5 = (_channels(c, width) for c in (32, 64, 128, 256, 512))
        self.conv1 = Conv_LReLU_2(4, c1)
        self.conv2 = Conv_LReLU_2(c1, c2)
        self.conv3 = Conv_LReLU_2(c2, c3)
        self.conv4 = Conv_LReLU_2(c3, c4)
        self.conv5 = Conv_LReLU_2(c4, c5)
        self.upv6 = nn.ConvTranspose2d(c5, c4, 2, stride=2)
        self.conv6 = Conv_LReLU_2(2 * c4, c4)
        self.upv7 = nn.ConvTranspose2d(c4, c3, 2, stride=2)
        self.conv7 = Conv_LReLU_2(2 * c3, c3)
        self.upv8 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.conv8 = Conv_LReLU_2(2 * c2, c2)
        self.upv9 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.conv9 = Conv_LReLU_2(2 * c1, c1)
        self.conv10 = nn.Conv2d(c1, 12, 1)
        self.pool1 = nn.MaxPool2d(2)
        self.up2 = nn.PixelShuffle(2)
        init_weights(self)

    def forward(self, x):
        conv1 = self.conv1(x)
        conv2 = self.conv2(self.pool1(conv1))
        conv3 = self.conv3(self.pool1(conv2))
        conv4 = self.conv4(self.pool1(conv3))
        conv5 = self.conv5(self.pool1(conv4))
        conv6 = self.conv6(torch.cat([self.upv6(conv5), conv4], 1))
        conv7 = self.conv7(torch.cat([self.upv7(conv6), conv3], 1))
        conv8 = self.conv8(torch.cat([self.upv8(conv7), conv2], 1))
        conv9 = self.conv9(torch.cat([self.upv9(conv8), conv1], 1))
        return self.up2(self.conv10(conv9))
