"""The web console in a real browser (headless Chromium): what a musician sees and does on it,
and the session folder's index.html opened from disk."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, page_errors, wait_for
from conftest import pools_full, write_config
from helpers import Daemon, OscClient

#: A hat whose clips take a while (many sampling steps), so its pool level and a job's progress
#: visibly move on the page while the test watches.
SLOW_HAT = """
[instruments.hat]
model = "m"
pool = 3
steps = 400
"""


@pytest.fixture
def browser() -> Any:
    driver = chromium()
    yield driver
    driver.quit()


def _levels(driver: Any) -> dict[str, tuple[int, int]]:
    """Each pad's pool level as the page shows it: (ready, target)."""
    levels = driver.execute_script("""
        const out = {};
        for (const pad of document.querySelectorAll('#pads .pad[data-instrument]')) {
          const level = pad.querySelector('.level');
          out[pad.dataset.instrument] = [Number(level.dataset.ready), Number(level.dataset.target)];
        }
        return out;""")
    return {name: (ready, target) for name, (ready, target) in levels.items()}


def _clip_names(driver: Any) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#clips li.clip')].map(li => li.dataset.name)")


def test_console_shows_pools_live_and_a_pad_adds_its_clip(tmp_path: Path, tiny_model: Path, start_daemon,
                                                           browser: Any) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=3, instruments=("kick", "snare"), extra=SLOW_HAT)
    daemon, client = start_daemon(config)
    browser.get(f"http://127.0.0.1:{daemon.web_port}/")
    wait_for(browser, lambda d: d.find_element("id", "connection").get_attribute("data-state") == "open", 10,
             "the page's WebSocket to open")
    pads = wait_for(browser, lambda d: [p.get_attribute("data-instrument")
                                        for p in d.find_elements("css selector", "#pads .pad")] or None, 10, "pads")
    assert pads == ["kick", "snare", "hat"]
    assert not [f for f in browser.find_elements("css selector", "form.endpoint-form") if f.is_displayed()], \
        "no continuation model: no continue or text-to-music form"

    # live pool levels: the page shows the pools full once status says so
    wait_for(browser, lambda d: _levels(d)["hat"] == (3, 3), 120, "the hat pool to show full")
    status = client.wait_until(pools_full(), what="pools to fill")
    wait_for(browser, lambda d: _levels(d) == {n: (i["ready"], i["target"]) for n, i in status["instruments"].items()},
             5, "the page's levels to match status")

    # a click on a pad makes a new clip appear at the top of the list within a second
    before = set(_clip_names(browser))
    pad = browser.find_element("css selector", '#pads .pad[data-instrument="hat"]')
    clicked = time.monotonic()
    pad.click()
    newest = wait_for(browser, lambda d: (names := _clip_names(d)) and names[0] not in before and names[0], 1.0,
                      "the played clip on the page")
    took = time.monotonic() - clicked
    session = daemon.session_dir()
    assert (session / newest).is_file() and newest.endswith("-hat.wav"), newest
    # dragged out of the page, the clip is its WAV file: Chromium's DownloadURL names the file and
    # a URL that serves exactly the bytes in the session folder
    dragged = browser.execute_script("""
        const li = document.querySelector('#clips li.clip');
        const data = new DataTransfer();
        li.dispatchEvent(new DragEvent('dragstart', {dataTransfer: data, bubbles: true}));
        return [li.draggable, data.getData('DownloadURL')];""")
    assert dragged[0] is True
    mime, name, url = dragged[1].split(":", 2)
    assert (mime, name) == ("audio/wav", newest) and url.startswith(f"http://127.0.0.1:{daemon.web_port}/")
    with urllib.request.urlopen(url) as response:
        assert response.read() == (session / newest).read_bytes()
    # and the hat's level follows the pool: two more hits empty it (refilling a slow hat's three
    # clips takes seconds, longer than a status tick), and the page shows it drop and refill
    for _ in range(2):
        client.request("/genbridge/drum/play", "hat", reply="/genbridge/drum/played")
    wait_for(browser, lambda d: _levels(d)["hat"][0] < 3, 5, "the hat level to drop")
    wait_for(browser, lambda d: _levels(d)["hat"][0] == 3, 60, "the hat level to refill")
    if os.environ.get("GENBRIDGE_SCREENSHOT"):  # make screenshot: the README's picture
        client.send("/genbridge/drum/play", "kick", 110)
        client.send("/genbridge/drum/play", "snare", 90)
        wait_for(browser, lambda d: len(_clip_names(d)) >= 3, 5, "clips for the screenshot")
        time.sleep(1.0)  # waveforms drawn: a picture, not a check
        browser.save_screenshot(os.environ["GENBRIDGE_SCREENSHOT"])
    assert not page_errors(browser), page_errors(browser)
    print(f"click to clip on the page: {took * 1000:.0f} ms")


def test_a_jobs_progress_bar_moves_and_cancel_stops_it(tmp_path: Path, tiny_model: Path, start_daemon,
                                                       browser: Any) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=1, instruments=("kick", "snare"), extra=SLOW_HAT)
    daemon, client = start_daemon(config)
    client.wait_until(pools_full(), what="pools to fill")
    browser.get(f"http://127.0.0.1:{daemon.web_port}/")
    wait_for(browser, lambda d: d.find_elements("css selector", '#pads .generate[data-instrument="hat"]'), 10,
             "the hat's generate button")
    count = browser.find_element("id", "generate-count")
    count.clear()
    count.send_keys("12")
    browser.find_element("css selector", '#pads .generate[data-instrument="hat"]').click()
    job = wait_for(browser, lambda d: d.find_elements("css selector", "#jobs .job[data-job-id]"), 10, "the job")[0]
    job_id = int(job.get_attribute("data-job-id"))
    values: list[float] = []

    def progressed(d: Any) -> bool:
        value = d.execute_script(f"const p = document.querySelector('#jobs .job[data-job-id=\"{job_id}\"] progress');"
                                 "return p ? p.value : null;")
        if value is not None:
            values.append(float(value))
        return len({v for v in values if 0 < v < 1}) >= 2

    wait_for(browser, progressed, 60, "the progress bar to move")
    assert values == sorted(values), values  # forward only
    browser.find_element("css selector", f'#jobs .job[data-job-id="{job_id}"] button.cancel').click()
    wait_for(browser, lambda d: not d.find_elements("css selector", f'#jobs .job[data-job-id="{job_id}"]'), 10,
             "the cancelled job to leave the list")
    status = client.status()
    assert status["jobs"]["list"] == []
    made = len([p for p in daemon.session_dir().glob("*-hat.wav")])
    assert 1 <= made < 12, made  # some were made, the cancel dropped the rest
    assert not page_errors(browser), page_errors(browser)


def test_the_session_index_plays_every_clip_from_disk(tmp_path: Path, tiny_model: Path, start_daemon,
                                                      browser: Any) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=2))
    client.wait_until(pools_full(), what="pools to fill")
    for name in ("kick", "snare", "hat", "kick"):
        client.request("/genbridge/drum/play", name, reply="/genbridge/drum/played")
    client.send("/genbridge/drum/generate", "snare", 2, 7)
    client.expect("/genbridge/job/started")
    for _ in range(2):
        client.expect("/genbridge/drum/ready")
    client.expect("/genbridge/job/done")
    session = daemon.session_dir()
    wavs = sorted(p.name for p in session.glob("*.wav"))
    assert len(wavs) == 6
    index = session / "index.html"

    def listed(d: Any) -> list[str] | None:
        d.get(index.as_uri())
        names = d.execute_script("return [...document.querySelectorAll('li.clip')].map(li => li.dataset.name)")
        return names if sorted(names) == wavs else None

    wait_for(browser, listed, 10, "index.html to list every clip")
    # every <audio> loads its WAV from disk: the browser reads its header and length
    durations = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const players = [...document.querySelectorAll('li.clip audio')];
        Promise.all(players.map(a => new Promise(ok => {
          if (a.readyState >= 1) return ok(a.duration);
          a.addEventListener('loadedmetadata', () => ok(a.duration), {once: true});
          a.addEventListener('error', () => ok(-1), {once: true});
          a.preload = 'metadata'; a.load();
        }))).then(done);""")
    assert len(durations) == 6 and all(abs(d - 4096 / 22050) < 0.01 for d in durations), durations


def test_serve_opens_the_console_on_port_9080_by_default(tmp_path: Path, tiny_model: Path, browser: Any) -> None:
    """The README's run command with no port given: the page on 127.0.0.1:9080 shows the three
    default instruments."""
    import socket

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 9080)) == 0:
            pytest.skip("something else listens on 127.0.0.1:9080")
    daemon = Daemon(tmp_path / "out", write_config(tmp_path / "c.toml", tiny_model, pool=1), own_web_port=False)
    try:
        daemon.wait_for_ping()
        assert "web console on http://127.0.0.1:9080/" in daemon.log()
        browser.get("http://127.0.0.1:9080/")
        pads = wait_for(browser, lambda d: [p.get_attribute("data-instrument")
                                            for p in d.find_elements("css selector", "#pads .pad")] or None, 10, "pads")
        assert pads == ["kick", "snare", "hat"]
    finally:
        daemon.stop()


def test_the_continuation_form_runs_a_job_the_page_follows(tmp_path: Path, start_daemon, browser: Any) -> None:
    """With a continuation model: the form built from the protocol table starts a job whose
    progress bar moves, and its chunks and result land in the clip list."""
    from test_continue_osc import _config, _prompt  # the continuation tests' own set-up, not a copy

    daemon, client = start_daemon(_config(tmp_path))
    _prompt(daemon.out)
    client.wait_until(lambda s: s.get("continuation", {}).get("state") == "ready", what="the MusicGen worker")
    browser.get(f"http://127.0.0.1:{daemon.web_port}/")
    form = wait_for(browser, lambda d: [f for f in d.find_elements("css selector", 'form[data-endpoint="continue"]')
                                        if f.is_displayed()], 10, "the continuation form")[0]
    wait_for(browser, lambda d: [f for f in d.find_elements("css selector", 'form[data-endpoint="music.generate"]')
                                 if f.is_displayed()], 5, "the text-to-music form beside it")
    form.find_element("css selector", "[name=source]").send_keys("prompt.wav")
    seconds = form.find_element("css selector", "[name=seconds]")
    seconds.clear()
    seconds.send_keys("40")  # long enough to watch: the token loop makes 3 s of this model in a blink
    form.find_element("css selector", "button.submit").click()
    values: list[float] = []

    def progressed(d: Any) -> bool:
        value = d.execute_script("const p = document.querySelector('#jobs .job[data-job-id] progress');"
                                 "return p ? p.value : null;")
        if value is not None:
            values.append(float(value))
        return len({v for v in values if 0 < v < 1}) >= 2

    wait_for(browser, progressed, 120, "the continuation's progress bar to move")
    assert values == sorted(values), values
    done = client.wait_until(lambda s: s["continuation"]["done"] == 1, timeout=300, what="the continuation")
    assert done["continuation"]["running"] is None
    wavs = {p.name for p in daemon.session_dir().glob("*.wav")}
    assert len(wavs) >= 3  # chunks and the result
    wait_for(browser, lambda d: set(_clip_names(d)) == wavs, 5, "every chunk and the result on the page")
    assert not page_errors(browser), page_errors(browser)


def test_beyond_loopback_the_page_works_with_its_token_and_hands_out_no_token(tmp_path: Path, tiny_model: Path,
                                                                               browser: Any) -> None:
    """Listening on every address: opened with the URL the log prints, the page loads its files,
    connects and plays; the token leaves the address bar, and no clip URL carries it."""
    config = write_config(tmp_path / "c.toml", tiny_model, pool=2,
                          extra='\n[server]\nhost = "0.0.0.0"\nallow = ["127.0.0.0/8"]\n')
    daemon = Daemon(tmp_path / "out", config)
    try:
        daemon.wait_for_ping()
        token = next(line for line in daemon.log().splitlines() if "web console on" in line).split("?token=")[1]
        OscClient(daemon.port).wait_until(pools_full(), what="pools to fill")
        browser.get(f"http://127.0.0.1:{daemon.web_port}/?token={token}")
        wait_for(browser, lambda d: d.find_element("id", "connection").get_attribute("data-state") == "open", 10,
                 "the page's WebSocket to open")
        assert token not in browser.current_url
        browser.find_element("css selector", '#pads .pad[data-instrument="kick"]').click()
        wait_for(browser, lambda d: _clip_names(d), 5, "the played clip")
        urls = browser.execute_script("return [...document.querySelectorAll('#clips a, #clips audio')]"
                                      ".map(e => e.href || e.src)")
        assert urls and not any(token in u for u in urls), urls
        waves = wait_for(browser, lambda d: d.execute_script(
            "return [...document.querySelectorAll('#clips canvas.wave')].map(c => c.dataset.wave)"
            ".filter(Boolean)") or None, 10, "the waveform")
        assert waves == ["drawn"]  # its WAV was fetched with the cookie
        assert not page_errors(browser), page_errors(browser)
    finally:
        daemon.stop()
