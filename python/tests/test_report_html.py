"""The HTML report as a person sees it: the page parsed, and rendered by headless Chromium."""

import html.parser
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import pare
from conftest import FashionCNN
from test_cli import fashion_images

BAR_BLUE = (0x4C, 0x78, 0xA8)  # the first series' colour in the page's CSS


class Page(html.parser.HTMLParser):
    """Every text node, every <figure> with its caption and bar count, and anything
    that would run code or reach the network."""

    def __init__(self, text):
        super().__init__()
        self.texts, self.figures, self.scripts, self.links = [], [], 0, []
        self._in_caption = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "figure":
            self.figures.append({"caption": "", "bars": 0, "islands": 0})
        elif tag == "figcaption":
            self._in_caption = True
        elif tag == "rect" and self.figures:
            self.figures[-1]["bars"] += "bar" in classes
            self.figures[-1]["islands"] += "island" in classes
        elif tag == "script":
            self.scripts += 1
        self.links += [attrs[k] for k in ("src", "href") if attrs.get(k)]
        self.links += [v for k, v in attrs.items() if k.startswith("on")]

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self._in_caption = False

    def handle_data(self, data):
        self.texts.append(data.strip())
        if self._in_caption:
            self.figures[-1]["caption"] += data

    def figure(self, caption_start):
        found = [f for f in self.figures if f["caption"].startswith(caption_start)]
        assert len(found) == 1, (caption_start, [f["caption"] for f in self.figures])
        return found[0]


def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("SKIPPED LOUDLY: chromium is not installed (apt-get install chromium); the page was not rendered")
    return path


def render(page_path, png_path, dump_dom=False):
    """Loads the page in headless Chromium; returns (console lines, stdout)."""
    mode = ["--dump-dom"] if dump_dom else [f"--screenshot={png_path}", "--window-size=1200,2000"]
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={png_path.parent / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
         *mode, f"file://{page_path}"],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return console, result.stdout


def screenshot_pixels(page_path, png_path):
    from PIL import Image  # python3-pil: a real PNG decoder

    console, _ = render(page_path, png_path)
    assert console == [], console
    with Image.open(png_path) as image:
        assert image.size == (1200, 2000)
        return np.asarray(image.convert("RGB"))


def keep_screenshot(png_path, name):
    """PARE_SCREENSHOT_DIR=dir keeps the screenshots for a person to look at."""
    keep = os.environ.get("PARE_SCREENSHOT_DIR")
    if keep:
        shutil.copy(png_path, os.path.join(keep, name))


def blue_pixels(pixels):
    return int(np.all(pixels == BAR_BLUE, axis=-1).sum())


@pytest.fixture(scope="module")
def pipeline_report(tmp_path_factory, fashion_mnist_dir=os.environ.get(
        "PARE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")):
    """Pruned, then int8 with fc2 kept float, on real Fashion-MNIST calibration images."""
    d = tmp_path_factory.mktemp("report_html")
    torch.manual_seed(0)
    scripted = torch.jit.script(FashionCNN().eval())
    images = fashion_images(fashion_mnist_dir, 320)
    calibration = list(images[:256].split(64))
    _, report = pare.Pipeline([
        pare.L1Prune(amount=0.7, scope="global"),
        pare.QuantizeInt8(calibration=calibration, observer="minmax", skip=["fc2"], never_slower=False),
        pare.ExportTorchScript(str(d / "small.pt"), verify_with=[images[256:288]], tolerance=10.0),
    ]).run(scripted)
    page = d / "report.html"
    page.write_text(report.to_html("Fashion CNN"))
    return d, report, page


def test_page_names_every_layer_and_draws_one_bar_per_figure(pipeline_report):
    _, report, page = pipeline_report
    parsed = Page(page.read_text())
    assert parsed.scripts == 0 and parsed.links == []  # nothing runs, nothing is fetched
    for entry in report.passes:
        for layer in entry.layers:
            assert layer.name in parsed.texts, layer.name
    prune, quantize = report["l1_prune"], report["quantize_int8"]
    assert parsed.figure("Time per pass")["bars"] == len(report.passes) == 3
    assert parsed.figure("Sparsity per layer (l1_prune)")["bars"] == len(prune.layers) == 4
    sqnr = parsed.figure("Int8 SQNR")
    int8 = [layer for layer in quantize.layers if layer.labels.get("status") == "int8"]
    floats = [layer for layer in quantize.layers if layer.labels.get("status") == "float"]
    assert len(floats) == 1 and floats[0].name.startswith("fc2")
    assert sqnr["bars"] == len(int8) == 3 and sqnr["islands"] == 1
    assert any(t.startswith("float island") for t in parsed.texts)
    assert f"{100 * prune.total_sparsity:.4g}%" in parsed.texts  # the sparsity card


def test_chromium_renders_the_report_without_errors(pipeline_report):
    d, _, page = pipeline_report
    pixels = screenshot_pixels(page, d / "report.png")
    keep_screenshot(d / "report.png", "report.png")
    # Not a blank page (a blank one is < 1, see below); how far above that
    # depends on how much of the window the content fills.
    assert pixels.std() > 5
    assert blue_pixels(pixels) > 2000  # the bars are drawn, in the series colour
    _, dom = render(page, d / "dom.png", dump_dom=True)
    drawn = sum(figure["bars"] for figure in Page(page.read_text()).figures)
    assert dom.count('class="bar ') == drawn >= 3 + 4 + 3  # the browser saw every bar


def test_console_errors_and_blank_pages_are_caught(tmp_path):
    """The checks above can fail: a broken page trips them."""
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>missing_function();</script></body></html>")
    console, _ = render(broken, tmp_path / "broken.png")
    assert any("Uncaught" in line for line in console), console
    from PIL import Image

    with Image.open(tmp_path / "broken.png") as image:
        assert np.asarray(image.convert("RGB")).std() < 1


def test_channels_chart_is_drawn_from_what_layers_carry():
    report = pare.Report.from_json("""{"passes": [{"pass": "prune_channels", "seconds": 0.5, "metrics": {"macs_before": 2e6, "macs_after": 1e6},
      "layers": [
        {"name": "group conv1+bn1", "parameters": 0, "nonzeros": 0, "channels_before": 64, "channels_after": 32},
        {"name": "group layer1.0", "parameters": 0, "nonzeros": 0, "channels_before": 128, "channels_after": 96},
        {"name": "conv9.weight", "parameters": 90, "nonzeros": 90, "metrics": {"channels_before": 16, "channels_after": 8}}]}]}""")
    layers = report["prune_channels"].layers
    assert (layers[0].channels_before, layers[0].channels_after) == (64, 32) and layers[2].channels_before is None
    page = report.to_html()
    assert report._repr_html_() == page
    parsed = Page(page)
    assert parsed.figure("Channels before and after")["bars"] == 2 * 3
    assert {"group conv1+bn1", "group layer1.0", "conv9.weight", "2 M", "1 M"} <= set(parsed.texts)


def test_names_are_escaped():
    report = pare.Report.from_json("""{"passes": [{"pass": "p<script>", "seconds": 0,
      "layers": [{"name": "<script>alert(1)</script>", "parameters": 10, "nonzeros": 5}]}]}""")
    parsed = Page(report.to_html('"><script>x()</script>'))
    assert parsed.scripts == 0
    assert "<script>alert(1)</script>" in parsed.texts


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pare", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_inspect_html_draws_the_embedded_report(pipeline_report):
    d, report, _ = pipeline_report
    out = d / "inspect.html"
    result = run_cli("inspect", d / "small.pt", "--html", out)
    assert result.returncode == 0, result.stderr
    assert not (d / "inspect.html.tmp").exists()
    parsed = Page(out.read_text())
    assert parsed.figure("Int8 SQNR")["bars"] == 3
    assert parsed.figure("Time per pass")["bars"] == len(report.passes) + 1  # + the inspect entry
    assert "inspect" in parsed.texts and any(t.startswith("pare inspect:") for t in parsed.texts)
    assert str((d / "small.pt").stat().st_size) in out.read_text()  # file_bytes in the summary
    assert pare.inspect_report(str(d / "small.pt"))["inspect"].metrics["file_bytes"] == (d / "small.pt").stat().st_size
    missing = run_cli("inspect", d / "missing.pt", "--html", out)
    assert missing.returncode != 0 and "no such file" in missing.stderr
    unwritable = run_cli("inspect", d / "small.pt", "--html", d / "no-such-dir" / "page.html")
    assert unwritable.returncode == 1 and unwritable.stderr.startswith("pare: --html: could not write ")


def test_bench_html_shows_percentiles_and_throughput_side_by_side(pipeline_report):
    d, _, _ = pipeline_report
    torch.jit.script(FashionCNN().eval()).save(str(d / "fp32.pt"))
    out = d / "bench.html"
    result = run_cli("bench", d / "fp32.pt", d / "small.pt", "--batch", "1,8", "--seconds", "0.05", "--html", out)
    assert result.returncode == 0, result.stderr
    parsed = Page(out.read_text())
    assert parsed.figure("Latency per call")["bars"] == 3 * 4  # p50, p95, p99 for 2 models x 2 batches
    assert parsed.figure("Throughput")["bars"] == 4
    assert {"fp32.pt b1 t1", "small.pt b8 t1", "p50", "p95", "p99"} <= set(parsed.texts)
    pixels = screenshot_pixels(out, d / "bench.png")
    keep_screenshot(d / "bench.png", "bench.png")
    assert pixels.std() > 5 and blue_pixels(pixels) > 500
