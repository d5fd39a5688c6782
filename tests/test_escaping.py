"""Class names are data, not markup: hostile names reach the chart as plain text and the card as text in the right
table cells, read back with a CommonMark + tables parser (markdown-it, as the Hub renders Markdown)."""

import copy
import html
import json
import shutil

import pytest
from huggingface_hub import ModelCard, ModelCardData
from tiny_unlearning_run import shared_unlearning_run

from hf_pbu.evidence import plot_per_class_accuracy
from hf_pbu.io.escaping import markdown_text, one_line
from hf_pbu.io.model_card import write_model_card

markdown_it = pytest.importorskip("markdown_it")

HOSTILE = [
    "<script>alert('x')</script>",
    "<img src=x onerror=alert(1)>",
    "a | b || c",
    "two\nlines\r\nthree",
    "$\\frac{1}{$ ^_^ $x^$",
    "**bold** [link](http://x) `code` ~~strike~~",
    "back\\slash &amp; &lt;b&gt;",
    "_under_ *star* <https://autolink>",
    "digit_3",
    "# not a heading",
]


def parse(text: str) -> list:
    return markdown_it.MarkdownIt("commonmark").enable("table").parse(text)


def inline_text(token) -> str:
    """What a reader sees of an inline token: its HTML, which must hold no tag, unescaped."""
    rendered = markdown_it.MarkdownIt("commonmark").enable("table").renderer.renderInline(token.children, {}, {})
    assert "<" not in rendered.replace("<code>", "").replace("</code>", ""), rendered
    return html.unescape(rendered.replace("<code>", "").replace("</code>", ""))


def tables(text: str) -> list[list[list[str]]]:
    """Every table of the Markdown `text`: rows of cell texts, header row first."""
    found, rows, cells, in_cell = [], None, None, False
    for token in parse(text):
        if token.type == "table_open":
            rows = []
        elif token.type == "tr_open":
            cells = []
        elif token.type in ("th_open", "td_open"):
            in_cell = True
        elif token.type == "inline" and in_cell:
            cells.append(inline_text(token))
            in_cell = False
        elif token.type in ("th_close", "td_close") and in_cell:  # an empty cell
            cells.append("")
            in_cell = False
        elif token.type == "tr_close":
            rows.append(cells)
        elif token.type == "table_close":
            found.append(rows)
    return found


def assert_no_html(text: str) -> None:
    tokens = parse(text)
    kinds = {token.type for token in tokens} | {child.type for t in tokens for child in (t.children or [])}
    assert not kinds & {"html_block", "html_inline"}, kinds


@pytest.mark.parametrize("name", HOSTILE)
def test_markdown_text_is_shown_literally_in_a_table_cell(name):
    row = f"| id | name |\n|---|---|\n| 0 | {markdown_text(name)} |\n"
    assert_no_html(row)
    assert tables(row) == [[["id", "name"], ["0", one_line(name)]]]


def test_the_chart_draws_any_class_name_as_text(tmp_path):
    """Before: `$\\frac{1}{$` made matplotlib's mathtext raise after the whole run."""
    path = plot_per_class_accuracy([90.0] * len(HOSTILE), [0.0] + [85.0] * (len(HOSTILE) - 1), HOSTILE, [0, 4],
                                   str(tmp_path / "chart.png"))
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG") and path.endswith("chart.png")
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]  # written whole, no temporary left


def test_the_card_shows_hostile_names_as_text_in_well_formed_tables(tmp_path):
    folder, results, config, _ = shared_unlearning_run()
    results = copy.deepcopy(results)  # shared with other tests
    output_dir = tmp_path / "hostile-run"
    shutil.copytree(folder, output_dir)
    results.forget_classes = [0, 4]
    results.evidence = {"chart": "per_class_accuracy.png", "forget_confusion": {"after": {
        HOSTILE[0]: {HOSTILE[2]: 61.0, HOSTILE[3]: 39.0}, HOSTILE[4]: {HOSTILE[1]: 100.0}}}}
    # Written through `a/b/..`: the card is named after the real folder.
    (output_dir / "sub").mkdir()
    write_model_card(str(output_dir / "sub" / ".."), results, config, "timm", None, base_model_name="<b>base</b>",
                     label_names=HOSTILE, dataset_name="data`set\n<i>x</i>", hub_dataset=False)

    card = ModelCard.load(output_dir / "README.md")
    ModelCardData(**card.data.to_dict())  # the metadata stays valid
    assert card.data.model_name == "hostile-run"
    text = card.text
    assert_no_html(text)
    assert text.splitlines()[1] == "# hostile-run"
    forgotten, *_ = tables(text)
    assert forgotten == [["Forgotten class id", "Name"], ["0", one_line(HOSTILE[0])], ["4", one_line(HOSTILE[4])]]
    confusion = next(table for table in tables(text) if table[0][0] == "Forgotten class")
    assert confusion[1:] == [
        [one_line(HOSTILE[0]), f"{one_line(HOSTILE[2])} 61.0%, {one_line(HOSTILE[3])} 39.0%"],
        [one_line(HOSTILE[4]), f"{one_line(HOSTILE[1])} 100.0%"],
    ]
    assert "`<b>base</b>`" in text and "`data'set <i>x</i>`" in text  # inside code spans: shown as written


def test_a_run_with_hostile_class_names_completes_with_its_chart_and_card(tiny_model_dirs, tiny_imagefolder, tmp_path,
                                                                          monkeypatch):
    """The tiny timm model renamed (config.json) and the image folder's classes with the same names: the command
    runs end to end (before, `$x^$` made the chart raise after the whole run)."""
    from test_unlearn_script import FAST, _script

    names = [HOSTILE[1], "$x^$ a_b^c", "two\nlines | <b>"]  # ({ } would stop `datasets` reading the labels)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["timm"], model)
    config = json.loads((model / "config.json").read_text())
    config["label_names"] = names
    (model / "config.json").write_text(json.dumps(config))
    data = tmp_path / "data"
    for split in ("train", "test"):
        for index, name in enumerate(names):
            shutil.copytree(f"{tiny_imagefolder}/{split}/digit_{index}", data / split / name)
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    out = tmp_path / "out"
    _script().main(["--model_id", str(model), "--dataset_name", "imagefolder", "--dataset_dir", str(data),
                    "--forget_class", "1", "--output_dir", str(out), "--fisher_cache_dir", "none", *FAST])

    assert (out / "per_class_accuracy.png").read_bytes().startswith(b"\x89PNG")
    text = ModelCard.load(out / "README.md").text
    assert_no_html(text)
    assert tables(text)[0] == [["Forgotten class id", "Name"], ["1", one_line(names[1])]]
