"""Pictures a person can read: upscaled image grids, scatters that account for every sample, data beside samples."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lit_score.visualize import image_grid, outside_note, save_image_grid, save_picture


def test_small_images_are_upscaled_by_whole_pixels(tmp_path):
    x = torch.rand(64, 1, 16, 16) * 2 - 1  # 8 x 8 digits-sized images: a 146 x 146 px grid before upscaling
    path = save_image_grid(x, tmp_path / "grid.png")
    grid = np.asarray(Image.open(path))
    assert grid.shape[:2] == (146 * 4, 146 * 4)  # the smallest whole factor reaching 512 px
    blocks = grid.reshape(146, 4, 146, 4, -1)
    assert (blocks == blocks[:, :1, :, :1]).all()  # nearest neighbour: every source pixel is a sharp 4 x 4 square
    big = save_image_grid(torch.rand(4, 3, 300, 300), tmp_path / "big.png")
    assert Image.open(big).size == (2 * 302 + 2, 2 * 302 + 2)  # already readable: left as is


def test_scatter_titles_count_what_the_view_leaves_out(tmp_path):
    xy = np.array([[0.0, 0.0], [0.5, -0.5], [71.2, 0.0], [np.nan, 1.0]])
    note = outside_note(xy, np.array([-1.0, -1.0]), np.array([1.0, 1.0]))
    assert note == ", 1 outside the view (max |x| 71.2), 1 non-finite"
    assert outside_note(xy[:2], np.array([-1.0, -1.0]), np.array([1.0, 1.0])) == ""
    samples = torch.cat([torch.randn(500, 2), torch.tensor([[60.0, -60.0]])])
    one = Image.open(save_picture(samples, tmp_path / "one.png"))
    two = Image.open(save_picture(samples, tmp_path / "two.png", reference=torch.randn(500, 2)))
    assert two.size[0] > 1.8 * one.size[0]  # samples and data side by side


def test_marked_images_get_a_red_frame_and_the_rest_stay_grey():
    x = -torch.ones(4, 1, 3, 3)  # black images: the frame is the only colour
    marked = torch.tensor([False, True, False, False])
    grid = image_grid(x, marked=marked, nrow=2).int()  # (2·5 + 2, 2·5 + 2, 3): cells of 3 + 2 padding
    red = (grid[..., 0] == 255) & (grid[..., 1] == 0) & (grid[..., 2] == 0)
    assert red[0:7, 5:12].sum() == 7 * 7 - 3 * 3 and red.sum() == 7 * 7 - 3 * 3  # the 2nd cell's ring, nothing else
    assert (grid[2:5, 7:10] == 0).all()  # the marked image itself is untouched
    assert torch.equal(image_grid(x, nrow=2), image_grid(x, marked=torch.zeros(4, dtype=torch.bool), nrow=2))
