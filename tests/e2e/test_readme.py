"""Every command line of the README and docs/*.md composes, so a renamed key cannot leave the
manual wrong.

What counts as a command: a shell line in a fenced code block, or an inline code span, in
which `python` (or a launcher such as `torchrun`) runs `train.py`, `scripts/evaluate.py` or
`scripts/visualize.py`; its arguments are composed with Hydra's compose API against
conf/train.yaml, conf/evaluate.yaml or conf/visualize.yaml. No training runs.

How a line is read, as bash would, then made composable:
- a line ending in `\\` continues on the next; `# ...` is a comment; quotes are removed
  (shlex); the command ends at `|`, `&&`, `||`, `;`, `&` or a redirection;
- `$VAR`, `${VAR}` and `<placeholder>` stand for a value the reader supplies: each becomes
  the word `PLACEHOLDER` (Hydra's own `${a.b}` and `${oc.env:X}` are left alone), and a
  bare `...` argument ("more arguments here") is dropped;
- Hydra's flags are dropped (`-m`, `--multirun`, `--cfg job`, `--resolve`, ...), any other
  `-flag` fails the test;
- a sweep (`-m a=1,2 model/prior=x,y`, `range(...)`) composes once with the first value of
  every swept key, and once more for each further option of each swept config group (the
  rest at their first value), so each option is tried without composing the whole product;
  other values compose alike, since compose checks keys, not values; `interval(lo, hi)`
  composes with `lo`;
- a YAML block whose first line is `# conf/<group>/<name>.yaml` is a file the page asks the
  reader to write: the page's commands compose with those files on Hydra's search path.
"""

import functools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "README.md").is_file())
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = {  # the script a command runs -> the config it composes
    "train.py": "train",
    "scripts/evaluate.py": "evaluate",
    "scripts/visualize.py": "visualize",
}
RUNNERS = ("python", "python3", "torchrun", "srun")  # one of them must come before the script
SHELL_ENDS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"}
HYDRA_FLAGS = {"-m": 0, "--multirun": 0, "--resolve": 0, "--cfg": 1, "-c": 1, "--package": 1}
HYDRA_FLAGS |= {"-p": 1, "--info": 0, "--help": 0, "--hydra-help": 0}
INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}  # --info X
PLACEHOLDER = "PLACEHOLDER"
SHELL_VARIABLE = re.compile(r"\$(?:[A-Za-z_]\w*|\{[A-Za-z_]\w*\})")  # not ${a.b}, ${oc.env:X}
ANGLE_PLACEHOLDER = re.compile(r"<[A-Za-z_][\w .-]*>")
LOOKS_LIKE_A_COMMAND = re.compile(rf"\b(?:{'|'.join(RUNNERS)})\b.*?({'|'.join(SCRIPTS)})")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
OWN_CONFIG = re.compile(r"\A# (conf/\S+\.yaml)\n")
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh"}


@dataclass(frozen=True)
class Command:
    """One command line of a page: where it is, what it runs, and its arguments."""

    page: Path
    line: int
    text: str
    script: str
    args: tuple[str, ...]
    error: str = ""  # why the line could not be read as bash would

    @property
    def place(self) -> str:
        return f"{shown(self.page)}:{self.line}"


def shown(page: Path) -> str:
    return str(page.relative_to(ROOT) if page.is_relative_to(ROOT) else page)


def shell_lines(block: str, first_line: int) -> list[tuple[int, str]]:
    """The lines of a shell block with `\\` continuations joined, each with its first line."""
    lines, start, parts = [], None, []
    for number, line in enumerate(block.splitlines(), first_line):
        start = number if start is None else start
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        lines.append((start, " ".join([*parts, line])))
        start, parts = None, []
    if parts:
        lines.append((start, " ".join(parts)))
    return lines


def parse(page: Path, line: int, text: str) -> Command | None:
    """The command a shell line runs, or None if it runs none of SCRIPTS."""
    text = ANGLE_PLACEHOLDER.sub(PLACEHOLDER, SHELL_VARIABLE.sub(PLACEHOLDER, text))
    try:
        words = shlex.split(text, comments=True)
    except ValueError as err:  # an unclosed quote: an error if the line looks like a command
        if script := LOOKS_LIKE_A_COMMAND.search(text):
            return Command(page, line, text.strip(), script.group(1), (), str(err))
        return None
    for i, word in enumerate(words):
        if word in SCRIPTS and any(runner in words[:i] for runner in RUNNERS):
            args = []
            for arg in words[i + 1 :]:
                if arg in SHELL_ENDS:
                    break
                args.append(arg)
            return Command(page, line, text.strip(), word, tuple(args))
    return None


def commands_of(page: Path) -> list[Command]:
    """The commands of a page: in its shell blocks, then in its inline code spans."""
    text = page.read_text()
    found = []
    prose = text
    for block in FENCE.finditer(text):
        language, body = block.group(1), block.group(2)
        first_line = text.count("\n", 0, block.start(2)) + 1
        prose = prose[: block.start()] + re.sub(r"[^\n]", " ", block.group()) + prose[block.end() :]
        if language in SHELL_LANGUAGES:
            for line, command in shell_lines(body, first_line):
                found += filter(None, [parse(page, line, command)])
    for span in re.finditer(r"`([^`]+)`", prose):  # a span may run over a line break
        line = text.count("\n", 0, span.start()) + 1
        found += filter(None, [parse(page, line, span.group(1).replace("\n", " "))])
    return found


def own_configs(page: Path) -> dict[str, str]:
    """The config files a page asks the reader to write: their path under conf/, their text."""
    files = {}
    for block in FENCE.finditer(page.read_text()):
        if block.group(1) in ("yaml", "yml") and (name := OWN_CONFIG.match(block.group(2))):
            files[name.group(1).removeprefix("conf/")] = block.group(2)
    return files


def overrides_to_compose(command: Command) -> tuple[str | None, list[list[str]]]:
    """The config name the command picks (--config-name) and the override lists to compose:
    its flags dropped and its sweeps expanded as the module docstring says."""
    config_name, overrides, args = None, [], list(command.args)
    while args:
        arg = args.pop(0)
        if arg in ("--config-name", "-cn"):
            config_name = args.pop(0)
        elif arg in HYDRA_FLAGS:
            del args[: HYDRA_FLAGS[arg]]
            if arg == "--info" and args and args[0] in INFO_TOPICS:
                args.pop(0)
        elif arg.startswith("-") and "=" not in arg:
            raise ValueError(f"{arg}: not a flag of Hydra's command line")
        elif arg != "...":
            overrides.append(arg)
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = [values(override) for override in parsed]
    first = [options[0] for options in choices]
    variants = [first]
    for i, options in enumerate(choices):
        variants += [[*first[:i], other, *first[i + 1 :]] for other in options[1:]]
    return config_name, variants


def values(override: Override) -> list[str]:
    """One override as `key=value` strings: its single value, or each value of a sweep whose
    values are options of a config group (each may be missing); of a sweep over a plain
    value, the first (compose checks keys, not values, so the others compose alike)."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        return [override.input_line]
    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        return [f"{key}={sweep.start}"]
    if not is_group(override.key_or_group):
        return [f"{key}={next(iter(override.sweep_string_iterator()))}"]
    if isinstance(sweep, (ChoiceSweep, RangeSweep)):
        return [f"{key}={value}" for value in override.sweep_string_iterator()]
    raise ValueError(f"{override.input_line}: a sweep this test cannot expand")


def is_group(key: str) -> bool:
    """Whether `key=...` picks an option of a config group (conf/KEY/, or one of Hydra's)."""
    return "/" in key or (ROOT / "conf" / key).is_dir()


COMMANDS = [command for page in PAGES for command in commands_of(page)]


def test_the_pages_have_commands_of_each_script() -> None:
    """The collector finds the README's commands (a failure here means it finds none)."""
    readme = [command for command in COMMANDS if command.page.name == "README.md"]
    assert {command.script for command in readme} == set(SCRIPTS)
    assert len(readme) >= 30


Batches = dict[tuple[str, ...], tuple[str, ...]]  # config, search path, choices -> values


def split(overrides: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Overrides as the choices they make (config group options, `+`, `~` and `@` overrides)
    and the plain values they set on keys the choices leave in place."""
    plain = [o for o in overrides if re.match(r"[\w.]+=", o) and not is_group(o.split("=")[0])]
    return tuple(o for o in overrides if o not in plain), tuple(plain)


@functools.cache
def compose_error(config_name: str, overrides: tuple[str, ...]) -> str:
    """Hydra's error on composing the config with these overrides, or "" if it composes."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        try:
            compose(config_name, list(overrides))
        except Exception as err:
            return str(err)
    return ""


def compose_command(command: Command, own_conf: Path | None, together: Batches) -> None:
    """Compose each override list of the command; fail naming its place and the error.

    To save composing (a tenth of a second each), the plain values of all the commands that
    make the same choices are first composed at once; only if that fails is the command's
    own list composed, so an error is always the command's own.
    """
    try:
        if command.error:
            raise ValueError(command.error)
        config_name, variants = overrides_to_compose(command)
    except Exception as err:
        pytest.fail(f"{command.place}: `{command.text}` cannot be read: {err}", pytrace=False)
    config_name = config_name or SCRIPTS[command.script]
    search = (f"hydra.searchpath=[file://{own_conf}]",) if own_conf else ()
    for overrides in variants:
        choices, plain = split(overrides)
        batch = together.get((config_name, *search, *choices), plain)
        if not compose_error(config_name, (*search, *choices, *batch)):
            continue
        if error := compose_error(config_name, (*search, *choices, *plain)):
            pytest.fail(
                f"{command.place}: `{command.text}` does not compose "
                f"(overrides {overrides}): {error}",
                pytrace=False,
            )


@pytest.fixture(scope="module")
def own_conf(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path | None]:
    """For each page, a folder holding the config files it asks the reader to write, if any."""
    folders = {}
    for page in PAGES:
        folders[page] = None
        if files := own_configs(page):
            folders[page] = tmp_path_factory.mktemp("conf")
            for name, text in files.items():
                (folders[page] / name).parent.mkdir(parents=True, exist_ok=True)
                (folders[page] / name).write_text(text)
    return folders


@pytest.fixture(scope="module")
def together(own_conf: dict[Path, Path | None]) -> Batches:
    """The plain values of all commands, by the config, search path and choices they share."""
    batches: dict[tuple[str, ...], dict[str, None]] = {}
    for command in COMMANDS:
        try:
            config_name, variants = overrides_to_compose(command)
        except Exception:
            continue  # the command's own test names the error
        config_name = config_name or SCRIPTS[command.script]
        folder = own_conf[command.page]
        search = (f"hydra.searchpath=[file://{folder}]",) if folder else ()
        for overrides in variants:
            choices, plain = split(overrides)
            batches.setdefault((config_name, *search, *choices), {}).update(dict.fromkeys(plain))
    return {key: tuple(values) for key, values in batches.items()}


# The options that need one of the extras (`pip install -e ".[sweep,slurm]"`): their plugin.
PLUGINS = {
    "hydra/launcher=cpu_parallel": "hydra_plugins.hydra_joblib_launcher",
    "hydra/launcher=slurm": "hydra_plugins.hydra_submitit_launcher",
    "hparams_search=optuna": "hydra_plugins.hydra_optuna_sweeper",
}


@pytest.mark.parametrize("command", COMMANDS, ids=[command.place for command in COMMANDS])
def test_the_command_composes(
    command: Command, own_conf: dict[Path, Path | None], together: Batches
) -> None:
    for option in set(command.args) & set(PLUGINS):
        pytest.importorskip(PLUGINS[option])
    compose_command(command, own_conf[command.page], together)


def test_a_renamed_key_fails_with_its_place(tmp_path: Path) -> None:
    """A README line with a key that no longer exists fails, naming the page and line."""
    page = tmp_path / "README.md"
    page.write_text(
        "Train:\n\n```bash\npython train.py model.latent_size=2 \\\n"
        "    trainer.max_epochs=1   # fine\n"
        "python train.py -m model.latnt_size=2,10 trainer.max_epochs=1\n```\n"
    )
    good, renamed = commands_of(page)
    assert (good.line, good.args) == (4, ("model.latent_size=2", "trainer.max_epochs=1"))
    compose_command(good, None, {})
    with pytest.raises(pytest.fail.Exception, match=r"README\.md:6: .*model\.latnt_size"):
        compose_command(renamed, None, {})


def test_placeholders_sweeps_and_flags_are_read_as_the_docstring_says(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Run `python train.py data.data_dir=$DATA_DIR model/prior=standard,vamp -m seed=0,1` or\n"
        "`python scripts/evaluate.py run_dir=<run folder> ... iw_samples=5 --cfg job`.\n"
    )
    sweep, evaluation = commands_of(page)
    assert sweep.args == (
        "data.data_dir=PLACEHOLDER",
        "model/prior=standard,vamp",
        "-m",
        "seed=0,1",
    )
    assert overrides_to_compose(sweep)[1] == [
        ["data.data_dir=PLACEHOLDER", "model/prior=standard", "seed=0"],
        ["data.data_dir=PLACEHOLDER", "model/prior=vamp", "seed=0"],
    ]
    assert (evaluation.line, evaluation.script) == (2, "scripts/evaluate.py")
    assert overrides_to_compose(evaluation) == (None, [["run_dir=PLACEHOLDER", "iw_samples=5"]])
    info = Command(page, 1, "", "train.py", ("--info", "defaults", "seed=1", "--info", "seed=2"))
    assert overrides_to_compose(info) == (None, [["seed=1", "seed=2"]])
    with pytest.raises(ValueError, match="--fast: not a flag"):
        overrides_to_compose(Command(page, 1, "", "train.py", ("--fast",)))
