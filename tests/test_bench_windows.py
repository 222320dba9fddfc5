"""`spp-cls bench windows`: a small real run and its JSON, the drawn proposals, the R-CNN warp, one-line errors.
Speed is never asserted: only that the figures are sane and consistent."""
from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F

from spp_cls.bench.windows import IMAGE_SIZE, SMALLEST_PROPOSAL, proposal_boxes, warped_conv_maps
from spp_cls.cli import main
from spp_cls.models import create
from spp_cls.paper import TABLE9_TIMES, TABLE10_SPEEDUPS

TIMES = ("conv_s", "fc_s", "total_s")


def test_a_small_run_prints_the_paper_layout_and_writes_the_json(tmp_path, capsys):
    out = tmp_path / "windows.json"
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"a.jpg": [[0, 0, 500, 375], [10, 20, 60, 90], [100, 100, 300, 200]],
                                 "b.jpg": [[5, 5, 120, 300], [400, 300, 500, 375]]}))
    assert main(["bench", "windows", "--width", "0.0625", "--boxes", str(boxes), "--device", "cpu",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert {"spp_1scale", "spp_5scale", "rcnn", "speedup_1scale", "speedup_5scale", "settings"} <= set(report)
    for way in ("spp_1scale", "spp_5scale", "rcnn"):
        values = [report[way][key] for key in TIMES]
        assert all(math.isfinite(v) and v > 0 for v in values), (way, values)
        assert math.isclose(report[way]["total_s"], report[way]["conv_s"] + report[way]["fc_s"], rel_tol=1e-9)
    assert math.isclose(report["speedup_1scale"], report["rcnn"]["total_s"] / report["spp_1scale"]["total_s"])
    assert report["settings"]["windows_per_image"] == [3, 2] and report["settings"]["images"] == 2
    assert report["settings"]["width"] == 0.0625
    assert report["settings"]["scales_5"] == [480, 576, 688, 864, 1200]
    for title in ("conv time", "fc time", "total time", "speed-up (total)", "SPP 1-scale", "SPP 5-scale", "R-CNN"):
        assert title in printed
    assert f"{TABLE9_TIMES['rcnn'].conv_s:.3f}" in printed and f"{TABLE10_SPEEDUPS['spp_1scale']:g}x" in printed
    assert f"{report['speedup_1scale']:.1f}x" in printed
    assert "No mAP" in printed


def test_drawn_proposals_are_reproducible_inside_the_image_and_spread_like_selective_search():
    draw = [proposal_boxes(2000, IMAGE_SIZE, torch.Generator().manual_seed(seed)) for seed in (3, 3, 4)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])
    boxes = draw[0]
    height, width = IMAGE_SIZE
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert torch.equal(boxes, boxes.round())
    sides = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    assert sides.min() < 2 * SMALLEST_PROPOSAL and sides.max() > 0.8 * math.sqrt(height * width)
    assert 0.3 < (sides < 64).float().mean() < 0.7  # log-uniform: about half the windows are small
    aspect = (boxes[:, 2] - boxes[:, 0]) / (boxes[:, 3] - boxes[:, 1])
    assert aspect.min() < 0.45 and aspect.max() > 2.2


def test_the_rcnn_warp_is_each_box_cropped_and_resized_to_224():
    """Equal inside; where an enlarged box's output pixels sample within half a box pixel of its edge, roi_align
    blends in the image pixel beyond the edge and resizing the cut-out crop repeats the edge pixel. (0.05 of 255:
    float sample positions.)"""
    torch.manual_seed(0)
    net = create("zf5", head="spp", num_classes=3, width=0.0625, init="kaiming").eval()
    net.trunk = torch.nn.Identity()  # the warped pixels themselves
    image = torch.rand(1, 3, *IMAGE_SIZE) * 255
    rois = torch.tensor([[0, 10, 20, 150, 300], [0, 0, 0, 500, 375], [0, 300, 100, 333, 117]], dtype=torch.float32)
    with torch.no_grad():
        warped = warped_conv_maps(net, image, rois)
    for box, got in zip(rois[:, 1:].int().tolist(), warped):
        crop = image[..., box[1]:box[3], box[0]:box[2]]
        expected = F.interpolate(crop, size=(224, 224), mode="bilinear", align_corners=False, antialias=False)
        edge = math.ceil(224 / (2 * min(box[2] - box[0], box[3] - box[1]))) + 1
        inside = (..., slice(edge, -edge), slice(edge, -edge))
        torch.testing.assert_close(got[None][inside], expected[inside], rtol=0, atol=0.05)


def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys):
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"a.jpg": [[500, 0, 510, 375]]}))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    few = tmp_path / "few.json"
    few.write_text(json.dumps({"a.jpg": [[0, 0, 50, 50]]}))
    for args, said in ((["--boxes", str(outside)], "lies wholly outside the image (500x375)"),
                       (["--boxes", str(garbage)], "cannot read box file"),
                       (["--boxes", str(few), "--images", "2"], "holds boxes for 1 images"),
                       (["--windows", "0"], "must be at least 1"),
                       (["--width", "-1"], "positive number"),
                       (["--out", str(tmp_path / "no" / "such.json")], "does not exist")):
        assert main(["bench", "windows", "--device", "cpu", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("spp-cls bench windows: error:") and said in err[0], err
