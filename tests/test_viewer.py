"""The operator viewer in a real browser (headless Chromium via Playwright).

A real service analyses two sample scans (a dual-energy bag with advisory
alerts, a DICOS CT volume with an explosive alarm) and serves the viewer over
HTTP. The checks look at the pixels the browser paints, not just the DOM:
that the scan shows, that the alert boxes are there in their severity colour
and gone when toggled off, that tools, zoom, pan and CT slices change what is
on screen, and that decisions made from the keyboard reach the database.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import sqlalchemy as sa

from playwright.sync_api import expect, sync_playwright  # a test dependency; Chromium is Debian's

from tests.serve_support import serving

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_scans"
OPERATOR = ("olive", "operator-pass-1")
SUPERVISOR = ("sue", "supervisor-pass-1")
# Box colours (nii.annotate.image.SEVERITY_RGB, which the viewer uses too).
ALARM_RGB = (230, 25, 25)
ADVISORY_RGB = (255, 190, 0)
VIEWPORT = {"width": 1400, "height": 900}


# -- the server ---------------------------------------------------------------------------------------------------


class Server:
    def __init__(self, base_url, service, store, xray_id, ct_id, xray_alerts):
        self.base_url, self.service, self.store = base_url, service, store
        self.xray_id, self.ct_id = xray_id, ct_id
        # What the shipped models found in the bag: the box checks follow it,
        # so a retrained model changes the counts, not the test.
        self.xray_alerts = xray_alerts

    def decisions(self, scan_id):
        from nii.serve.decisions import decisions_of

        with self.store.transaction() as conn:
            return decisions_of(conn, scan_id)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from nii.serve.auth import add_user
    from nii.serve.run import submit_folder
    from nii.serve.service import Service, ServiceConfig
    from nii.serve.store import Store, results, scans

    store = Store.open(tmp_path_factory.mktemp("viewer-data"))
    with store.transaction() as conn:
        add_user(store, conn, *OPERATOR, "operator")
        add_user(store, conn, *SUPERVISOR, "supervisor")
    service = Service(store, ServiceConfig(workers=1, dicom_port=0))
    service.start()
    accepted, refused = submit_folder(service, [SAMPLES / "bag-threat.json", SAMPLES / "bag-dicos-ct.dcm"],
                                      source="samples")
    assert (accepted, refused) == (2, [])
    assert service.wait_until_idle(timeout=300)

    with store.transaction() as conn:
        rows = {r.kind: r for r in conn.execute(sa.select(scans))}
        stored = {r.scan_id: r.result_sha256 for r in conn.execute(sa.select(results))}
    xray, ct = rows["dual_energy"], rows["ct_volume"]
    assert xray.status == ct.status == "done"
    # What the box checks rely on: the bag has advisory alerts, the CT an alarm.
    xray_result = json.loads(store.blobs.get(stored[xray.scan_id]))
    ct_result = json.loads(store.blobs.get(stored[ct.scan_id]))
    assert xray_result["alerts"] and all(a["severity"] == "advisory" for a in xray_result["alerts"])
    assert any(a["severity"] == "alarm" for a in ct_result["alerts"])

    try:
        with serving(service) as base_url:
            yield Server(base_url, service, store, xray.scan_id, ct.scan_id, xray_result["alerts"])
    finally:
        service.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def login(browser, server):
    """login(user) -> a page logged in as user, the queue loaded and the live stream connected."""
    contexts, errors = [], []

    def open_as(user=OPERATOR):
        context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda err: errors.append(f"{user[0]}: {err}"))
        page.goto(server.base_url + "/")
        page.fill("#login-user", user[0])
        page.fill("#login-password", user[1])
        page.click("#login-form button[type=submit]")
        expect(page.locator("#who-name")).to_have_text(user[0])
        expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=10000)
        expect(page.locator(".scan-row").first).to_be_visible()
        return page

    yield open_as
    for context in contexts:
        context.close()
    assert errors == [], "script errors in the page"


# -- helpers ------------------------------------------------------------------------------------------------------


def open_scan(page, scan_id):
    page.locator(f'.scan-row[data-scan="{scan_id}"]').click()
    wait_view(page, scan_id + "?")


def wait_view(page, *parts, absent=()):
    """Wait until the rendering on screen is the one whose request has all of ``parts`` and none of ``absent``."""
    page.wait_for_function(
        """([parts, absent]) => {
             const vp = document.querySelector('#viewport');
             const view = vp.dataset.view || '';
             return vp.getAttribute('aria-busy') === 'false' && parts.every(p => view.includes(p))
               && !absent.some(p => view.includes(p));
           }""", arg=[list(parts), list(absent)], timeout=20000)
    page.wait_for_timeout(100)  # one more frame painted


def wait_boxes(page, count):
    expect(page.locator("#viewport")).to_have_attribute("data-boxes", str(count))
    page.wait_for_timeout(100)


def shot(page) -> np.ndarray:
    """The viewport as painted, RGB (rows, cols, 3)."""
    png = page.locator("#viewport").screenshot()
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def colour_mask(image, rgb, tol=28) -> np.ndarray:
    return np.all(np.abs(image.astype(int) - np.array(rgb)) <= tol, axis=-1)


def box_on_screen(page, alert_id) -> tuple[int, int, int, int]:
    """Where the overlay says alert ``alert_id``'s box is, in viewport pixels (x0, y0, x1, y1)."""
    rect = page.evaluate(
        """id => {
             const line = document.querySelector(`#overlay .box[data-alert="${id}"] .box-line`).getBoundingClientRect();
             const vp = document.querySelector('#viewport').getBoundingClientRect();
             return [line.left - vp.left, line.top - vp.top, line.right - vp.left, line.bottom - vp.top];
           }""", alert_id)
    return tuple(int(round(v)) for v in rect)


def edge_coverage(image, rgb, box) -> float:
    """Fraction of the box's four edges (on screen) with a pixel of colour ``rgb`` within 3 px."""
    x0, y0, x1, y1 = box
    mask = colour_mask(image, rgb)
    rows, cols = mask.shape
    hits = []
    for x in range(max(x0 + 6, 0), min(x1 - 6, cols)):
        for y in (y0, y1):
            if 3 <= y < rows - 3:
                hits.append(mask[y - 3:y + 4, x].any())
    for y in range(max(y0 + 6, 0), min(y1 - 6, rows)):
        for x in (x0, x1):
            if 3 <= x < cols - 3:
                hits.append(mask[y, x - 3:x + 4].any())
    assert len(hits) > 40, f"box {box} is hardly on screen"
    return float(np.mean(hits))


def content_bbox(image, border=4) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of what is not the viewport's near-black background."""
    inner = image[border:-border, border:-border]
    ys, xs = np.nonzero(inner.max(axis=-1) > 40)
    assert xs.size, "the viewport is blank"
    return xs.min() + border, ys.min() + border, xs.max() + border + 1, ys.max() + border + 1


def stage_crop(page, image) -> np.ndarray:
    """The part of a viewport screenshot the scan image covers."""
    rect = page.evaluate(
        """() => {
             const s = document.querySelector('#scan-image').getBoundingClientRect();
             const vp = document.querySelector('#viewport').getBoundingClientRect();
             return [s.left - vp.left, s.top - vp.top, s.right - vp.left, s.bottom - vp.top];
           }""")
    x0, y0, x1, y1 = (int(round(v)) for v in rect)
    x0, y0 = max(x0 + 2, 0), max(y0 + 2, 0)
    return image[y0:y1 - 2, x0:x1 - 2]


# -- tests --------------------------------------------------------------------------------------------------------


def test_login_shows_user_queue_and_navigates(login, server, browser):
    # A wrong password is refused on the page.
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(server.base_url + "/")
    page.fill("#login-user", OPERATOR[0])
    page.fill("#login-password", "not-the-password")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("Wrong user name or password")
    expect(page.locator("#app")).to_be_hidden()
    context.close()

    page = login(OPERATOR)
    expect(page.locator("#who-role")).to_have_text("operator")
    listed = page.request.get(server.base_url + "/api/scans").json()["scans"]
    rows = page.locator(".scan-row")
    assert [rows.nth(i).get_attribute("data-scan") for i in range(rows.count())] == [s["scan_id"] for s in listed]
    ct_row = page.locator(f'.scan-row[data-scan="{server.ct_id}"]')
    expect(ct_row.locator(".badge")).to_have_text("ALARM")
    expect(ct_row).to_contain_text("1 alert · 1 alarm")
    expect(page.locator(f'.scan-row[data-scan="{server.xray_id}"] .badge')).to_have_text("CLEAR")
    # The newest scan opens first; J goes down the list, K back up.
    first, second = listed[0]["scan_id"], listed[1]["scan_id"]
    wait_view(page, first + "?")
    page.keyboard.press("j")
    wait_view(page, second + "?")
    expect(page.locator(f'.scan-row[data-scan="{second}"]')).to_have_attribute("aria-current", "true")
    page.keyboard.press("k")
    wait_view(page, first + "?")
    page.keyboard.press("ArrowDown")
    wait_view(page, second + "?")
    # The hint lists the shortcuts.
    hint = page.locator("#shortcuts").inner_text()
    for words in ("clear", "search", "threat", "boxes", "next scan", "zoom"):
        assert words in hint

    page.click("#logout")
    expect(page.locator("#login-form")).to_be_visible()
    assert page.request.get(server.base_url + "/api/me").status == 401


def test_scan_and_alert_boxes_render_and_toggle(login, server):
    page = login()
    open_scan(page, server.xray_id)
    # Material colours (the default tool): the scan shows, with the advisory boxes in amber.
    wait_view(page, server.xray_id, "tool=colour")
    alerts = len(server.xray_alerts)
    wait_boxes(page, alerts)
    image = shot(page)
    scan = stage_crop(page, image)
    assert scan.size and scan.std() > 20, "the scan area is blank"
    box = box_on_screen(page, alerts)
    assert edge_coverage(image, ADVISORY_RGB, box) > 0.9
    assert not colour_mask(image, ALARM_RGB).any()  # no alarms in this scan: nothing red

    page.keyboard.press("b")
    wait_boxes(page, 0)
    off = shot(page)
    assert edge_coverage(off, ADVISORY_RGB, box) < 0.02
    assert colour_mask(off, ADVISORY_RGB).sum() < 20
    assert stage_crop(page, off).std() > 20  # the scan itself stays
    expect(page.locator("#boxes-toggle")).to_have_attribute("aria-pressed", "false")

    # Back on (the button this time), over the greyscale image, where only the boxes have colour.
    page.click("#boxes-toggle")
    page.keyboard.press("2")
    wait_view(page, server.xray_id, "tool=grey")
    wait_boxes(page, alerts)
    grey = shot(page)
    assert edge_coverage(grey, ADVISORY_RGB, box) > 0.9
    assert not colour_mask(grey, ALARM_RGB).any()

    # The alert list: class, score, model and severity.
    items = page.locator(".alert-item")
    first = server.xray_alerts[0]
    expect(items).to_have_count(alerts)
    expect(items.first).to_contain_text(first["class"], ignore_case=True)
    expect(items.first).to_contain_text(f"{first['model']['name']} {first['model']['version']}")
    expect(items.first).to_contain_text("%")
    expect(items.first).to_contain_text("Advisory")


def test_inverse_tool_inverts_the_pixels(login, server):
    page = login()
    open_scan(page, server.xray_id)
    page.keyboard.press("b")
    wait_boxes(page, 0)
    page.click('.tool[data-tool="grey"]')
    wait_view(page, server.xray_id, "tool=grey")
    grey = stage_crop(page, shot(page)).astype(int)
    page.click('.tool[data-tool="inverse"]')
    wait_view(page, server.xray_id, "tool=inverse")
    expect(page.locator('.tool[data-tool="inverse"]')).to_have_attribute("aria-pressed", "true")
    inverse = stage_crop(page, shot(page)).astype(int)
    assert grey.shape == inverse.shape
    assert np.abs(grey - inverse).mean() > 40, "switching to inverse did not change the image"
    # Inverse is 255 - grey, pixel for pixel (both scaled the same way on screen).
    assert np.abs(grey + inverse - 255).mean() < 4

    page.click('.tool[data-tool="colour"]')
    wait_view(page, server.xray_id, "tool=colour")
    colour = stage_crop(page, shot(page)).astype(int)
    saturation = colour.max(axis=-1) - colour.min(axis=-1)
    assert (saturation > 60).mean() > 0.05, "material colours show no colour"

    # The density window: moving a slider selects the window tool with those bounds.
    page.locator("#window-hi").fill("2")
    wait_view(page, server.xray_id, "tool=window", "window=0.5%2C2")
    windowed = stage_crop(page, shot(page)).astype(int)
    assert np.abs(windowed - grey).mean() > 10


def test_zoom_and_pan_change_the_rendered_scale(login, server):
    page = login()
    open_scan(page, server.xray_id)
    page.click('.tool[data-tool="grey"]')
    wait_view(page, server.xray_id, "tool=grey")
    alerts = len(server.xray_alerts)
    wait_boxes(page, alerts)
    x0, y0, x1, y1 = content_bbox(shot(page))
    box = box_on_screen(page, alerts)

    fit = float(page.get_attribute("#viewport", "data-scale"))
    page.keyboard.press("-")
    page.wait_for_timeout(150)
    a0, b0, a1, b1 = content_bbox(shot(page))
    assert (a1 - a0) / (x1 - x0) == pytest.approx(0.8, abs=0.02)
    assert (b1 - b0) / (y1 - y0) == pytest.approx(0.8, abs=0.03)
    # The buttons zoom too, around the centre: + takes the scan wider than at fit.
    page.click("#zoom-in")
    page.click("#zoom-in")
    page.wait_for_timeout(150)
    assert float(page.get_attribute("#viewport", "data-scale")) == pytest.approx(fit * 1.25, rel=0.01)
    a0, b0, a1, b1 = content_bbox(shot(page))
    assert (b1 - b0) / (y1 - y0) == pytest.approx(1.25, abs=0.03)

    page.keyboard.press("0")
    page.wait_for_timeout(150)
    assert content_bbox(shot(page)) == pytest.approx((x0, y0, x1, y1), abs=2)

    # Wheel up over the box's centre zooms in around it: the box is bigger on screen, drawn in its colour.
    vp = page.locator("#viewport").bounding_box()
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    page.mouse.move(vp["x"] + cx, vp["y"] + cy)
    page.mouse.wheel(0, -300)
    page.wait_for_timeout(200)
    zoomed = box_on_screen(page, alerts)
    factor = (zoomed[2] - zoomed[0]) / (box[2] - box[0])
    assert factor > 1.3
    image = shot(page)
    assert edge_coverage(image, ADVISORY_RGB, zoomed) > 0.9
    assert float(page.get_attribute("#viewport", "data-scale")) == pytest.approx(fit * factor, rel=0.02)

    # A drag pans: the box moves with the pointer.
    page.mouse.move(vp["x"] + 300, vp["y"] + 300)
    page.mouse.down()
    page.mouse.move(vp["x"] + 360, vp["y"] + 340, steps=5)
    page.mouse.up()
    page.wait_for_timeout(150)
    moved = box_on_screen(page, alerts)
    assert (moved[0] - zoomed[0], moved[1] - zoomed[1]) == pytest.approx((60, 40), abs=2)
    assert edge_coverage(shot(page), ADVISORY_RGB, moved) > 0.9

    # Shift+arrows pan a tenth of the view, as scrolling would; the plain arrows still step the queue.
    selected = page.get_attribute(".scan-row[aria-current]", "data-scan")
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("Shift+ArrowDown")
    page.wait_for_timeout(150)
    stepped = box_on_screen(page, alerts)
    assert (stepped[0] - moved[0], stepped[1] - moved[1]) == pytest.approx((-0.1 * vp["width"], -0.1 * vp["height"]),
                                                                           abs=2)
    assert page.get_attribute(".scan-row[aria-current]", "data-scan") == selected == server.xray_id


def test_ct_slices_mip_and_projected_boxes(login, server):
    page = login()
    open_scan(page, server.ct_id)
    expect(page.locator("#ct-controls")).to_be_visible()
    # It opens on the MIP, which shows every box: the alarm box is red on the grey image.
    wait_view(page, server.ct_id, "axis=axial", absent=["index="])
    wait_boxes(page, 1)
    mip_boxed = shot(page)
    assert edge_coverage(mip_boxed, ALARM_RGB, box_on_screen(page, 1)) > 0.9

    page.keyboard.press("b")
    wait_boxes(page, 0)
    mip = stage_crop(page, shot(page)).astype(int)
    assert mip.std() > 20
    # PageDown leaves the MIP for the middle slice (48 slices: index 24), which cuts the box (z 18..38).
    page.keyboard.press("PageDown")
    wait_view(page, server.ct_id, "axis=axial", "index=24")
    expect(page.locator("#ct-mip")).not_to_be_checked()
    slice24 = stage_crop(page, shot(page)).astype(int)
    assert np.abs(slice24 - mip).mean() > 5
    # A MIP is the brightest of all slices: never darker than one of them.
    assert (mip < slice24 - 12).mean() < 0.01
    assert mip.mean() > slice24.mean() + 5

    # Shift+wheel scrolls slices: to slice 40, past the explosive (z 17..38), so the image changes.
    vp = page.locator("#viewport").bounding_box()
    page.mouse.move(vp["x"] + vp["width"] / 2, vp["y"] + vp["height"] / 2)
    page.keyboard.down("Shift")
    for _ in range(16):
        page.mouse.wheel(0, 120)
        page.wait_for_timeout(30)
    page.keyboard.up("Shift")
    wait_view(page, server.ct_id, "index=40")
    expect(page.locator("#ct-slice-label")).to_have_text("Slice 41 of 48")
    slice40 = stage_crop(page, shot(page)).astype(int)
    assert np.abs(slice40 - slice24).mean() > 5
    assert (mip < slice40 - 12).mean() < 0.01

    # Boxes on a slice: only where the slice cuts the box (z 18..38).
    page.keyboard.press("b")
    expect(page.locator("#boxes-toggle")).to_have_attribute("aria-pressed", "true")
    wait_boxes(page, 0)
    assert not colour_mask(shot(page), ALARM_RGB).any()
    page.locator("#ct-slice").fill("30")
    wait_view(page, server.ct_id, "index=30")
    wait_boxes(page, 1)
    assert edge_coverage(shot(page), ALARM_RGB, box_on_screen(page, 1)) > 0.9

    # Coronal MIP: x across, z down; the red box is 61 voxels wide and 21 high (box x 9..70, z 18..39).
    page.keyboard.press("m")
    wait_view(page, server.ct_id, "axis=axial", absent=["index="])
    page.select_option("#ct-axis", "coronal")
    wait_view(page, server.ct_id, "axis=coronal", absent=["index="])
    wait_boxes(page, 1)
    image = shot(page)
    ys, xs = np.nonzero(colour_mask(image, ALARM_RGB))
    width = xs.max() - xs.min()  # the box's left and right edges (the label starts at its left edge)
    right_edge = ys[xs >= xs.max() - 4]  # the label sits above the top left corner, so measure height at the right
    height = right_edge.max() - right_edge.min()
    assert width / height == pytest.approx(61 / 21, rel=0.08)
    assert edge_coverage(image, ALARM_RGB, box_on_screen(page, 1)) > 0.9
    # The keys still work after choosing the axis in the list: the middle of 96 coronal slices.
    page.keyboard.press("PageDown")
    wait_view(page, server.ct_id, "axis=coronal", "index=48")


def test_ct_box_projection_per_axis(login):
    page = login()
    views = page.evaluate(
        """async () => {
             const { boxInView } = await import('/static/boxes.js');
             const box = [9, 15, 18, 70, 71, 39];  // x0 y0 z0 x1 y1 z1
             return {
               flat: boxInView([1, 2, 3, 4]),
               axialMip: boxInView(box, { axis: 'axial', index: null }),
               coronal: boxInView(box, { axis: 'coronal', index: 20 }),
               sagittal: boxInView(box, { axis: 'sagittal', index: 9 }),
               axialCut: boxInView(box, { axis: 'axial', index: 38 }),
               axialMiss: boxInView(box, { axis: 'axial', index: 39 }),
               sagittalMiss: boxInView(box, { axis: 'sagittal', index: 8 }),
             };
           }""")
    assert views == {
        "flat": [1, 2, 3, 4],
        "axialMip": [9, 15, 70, 71],
        "coronal": [9, 18, 70, 39],
        "sagittal": [15, 18, 71, 39],
        "axialCut": [9, 15, 70, 71],
        "axialMiss": None,
        "sagittalMiss": None,
    }


def test_keyboard_decision_is_stored(login, server):
    page = login(OPERATOR)
    open_scan(page, server.xray_id)
    assert server.decisions(server.xray_id) == []
    page.keyboard.press("c")
    expect(page.locator("#decision-message")).to_contain_text("Recorded: Cleared")
    stored = server.decisions(server.xray_id)
    assert [(d.outcome, d.username, d.category) for d in stored] == [("clear", OPERATOR[0], None)]
    # The queue row follows (live event), and the history shows it.
    expect(page.locator(f'.scan-row[data-scan="{server.xray_id}"] .officer')).to_have_text("Cleared")
    expect(page.locator("#decision-history li")).to_have_count(1)


def test_second_decision_refused_then_supervisor_reverses(login, server):
    page = login(OPERATOR)
    open_scan(page, server.ct_id)
    page.click("#decide-search")
    expect(page.locator("#decision-message")).to_contain_text("Recorded: Search")
    page.keyboard.press("c")
    message = page.locator("#decision-message")
    expect(message).to_contain_text("only a supervisor can reverse it")
    expect(message).to_have_class("error")
    assert [d.outcome for d in server.decisions(server.ct_id)] == ["search"]

    boss = login(SUPERVISOR)
    open_scan(boss, server.ct_id)
    expect(boss.locator("#decision-standing")).to_contain_text("Search")
    boss.keyboard.press("t")
    dialog = boss.locator("#decision-dialog")
    expect(dialog).to_be_visible()
    expect(boss.locator("#dialog-title")).to_contain_text("Reverse")
    # A threat needs its category: the dialog will not close without one.
    boss.click("#dialog-confirm")
    expect(dialog).to_be_visible()
    boss.select_option("#dialog-category", "EXPLOSIVE")
    boss.fill("#dialog-note", "sheet explosive found on hand search")
    boss.click("#dialog-confirm")
    expect(dialog).to_be_hidden()
    expect(boss.locator("#decision-message")).to_contain_text("Recorded: Threat confirmed")
    stored = server.decisions(server.ct_id)
    assert [(d.outcome, d.username, d.category) for d in stored] == [
        ("search", OPERATOR[0], None), ("threat", SUPERVISOR[0], "EXPLOSIVE")]
    assert stored[1].supersedes == stored[0].id
    assert stored[1].note == "sheet explosive found on hand search"
    expect(boss.locator("#decision-history li")).to_have_count(2)
    expect(boss.locator("#decision-history li.reversed")).to_have_count(1)
    # The operator's page hears of it live.
    expect(page.locator(f'.scan-row[data-scan="{server.ct_id}"] .officer')).to_have_text("Threat confirmed")


def test_live_event_adds_a_new_scan_without_reload(login, server):
    from nii.serve.run import submit_folder

    page = login()
    page.evaluate("window.sameDocument = true")
    before = page.locator(".scan-row").count()
    accepted, refused = submit_folder(server.service, [SAMPLES / "bag-clear.json"], source="test")
    assert (accepted, refused) == (1, [])
    newest = page.request.get(server.base_url + "/api/scans?limit=1").json()["scans"][0]["scan_id"]
    rows = page.locator(".scan-row")
    expect(rows).to_have_count(before + 1, timeout=10000)
    assert rows.first.get_attribute("data-scan") == newest
    # The same row turns from queued to its verdict when the analysis is done.
    expect(rows.first.locator(".badge")).to_have_text("CLEAR", timeout=60000)
    assert page.evaluate("window.sameDocument") is True


def test_an_officer_opens_a_case_from_the_viewer(login, server):
    from nii.serve.store import case_notes, cases

    page = login(OPERATOR)
    open_scan(page, server.ct_id)
    page.click("#case-open")
    page.select_option("#case-category", "EXPLOSIVE")
    page.fill("#case-description", "sheet explosive in the lining")
    page.fill("#case-quantity", "0.4 kg")
    page.check("#case-seized")
    page.fill("#case-declaration-number", "DECL-77")
    page.click("#case-confirm")
    expect(page.locator("#case-message")).to_contain_text("opened")
    item = page.locator("#case-list .case").first
    expect(item).to_contain_text("seized")
    status = item.locator(".case-status")
    status.focus()
    page.keyboard.press("ArrowDown")  # choosing is not saving: an arrow key too many must not close a case
    page.keyboard.press("ArrowDown")
    page.wait_for_timeout(1500)  # time for a save the page should not make
    with server.store.read() as conn:
        assert conn.execute(sa.select(cases.c.status)).scalar() == "open"
    status.select_option("referred")
    item.locator(".case-set-status").click()
    expect(page.locator("#case-message")).to_contain_text("saved")
    page.locator('#case-list .case input[type=text]').first.fill("handed to the police")
    page.locator('#case-list .case input[type=text]').first.press("Enter")
    expect(page.locator("#case-list .case-notes li")).to_contain_text("handed to the police")
    with server.store.read() as conn:
        stored = conn.execute(sa.select(cases)).one()
        notes = conn.execute(sa.select(case_notes.c.text)).scalars().all()
    assert (stored.category, stored.quantity, stored.seized, stored.status, stored.declaration_number) == (
        "EXPLOSIVE", "0.4 kg", True, "referred", "DECL-77")
    assert notes == ["handed to the police"]


def test_decisions_offered_follow_the_role_and_a_logout_leaves_nothing_behind(login, server):
    from nii.serve.auth import add_user

    developer = ("dev-viewer", "developer-viewer-pass")
    with server.store.transaction() as conn:
        add_user(server.store, conn, *developer, "model_developer")
    page = login(developer)
    open_scan(page, server.xray_id)
    for outcome in ("clear", "search", "threat"):  # the service would refuse them: not offered
        button = page.locator(f"#decide-{outcome}")
        expect(button).to_be_disabled()
        expect(button).to_have_attribute("title", "your role does not record decisions")
    page.keyboard.press("s")
    expect(page.locator("#decision-message")).to_contain_text("Not available: your role does not record decisions")
    assert [d.username for d in server.decisions(server.xray_id)].count(developer[0]) == 0
    # Logging out and in again as someone else starts from a fresh page:
    # no message, panel or open scan of the last user is left to act on.
    page.click("#logout")
    expect(page.locator("#login-form")).to_be_visible()
    page.fill("#login-user", SUPERVISOR[0])
    page.fill("#login-password", SUPERVISOR[1])
    page.click("#login-form button[type=submit]")
    expect(page.locator("#who-name")).to_have_text(SUPERVISOR[0])
    expect(page.locator("#decision-message")).to_be_hidden()
    newest = page.locator(".scan-row").first.get_attribute("data-scan")
    expect(page.locator(".scan-row").first).to_have_attribute("aria-current", "true")
    wait_view(page, newest + "?")


def test_a_change_to_a_scan_on_an_unloaded_page_neither_counts_nor_makes_paging_skip(login, server, browser):
    from nii.serve.auth import User
    from nii.serve.decisions import record_decision

    # One scan a page, so the older scans are on pages not loaded yet.
    page = login()
    page.route("**/api/scans?*", lambda route: route.continue_(url=route.request.url.replace("limit=100", "limit=1")))
    page.reload()
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=10000)
    listed = page.request.get(server.base_url + "/api/scans").json()
    total, oldest = listed["total"], listed["scans"][-1]["scan_id"]
    assert total >= 2
    expect(page.locator("#queue-count")).to_have_text(f"1 of {total}")
    decided = bool(server.decisions(oldest))
    with server.store.transaction() as conn:  # another officer decides the oldest scan
        if not decided:
            record_decision(server.store, conn, User(SUPERVISOR[0], "supervisor"), oldest, "search")
        else:
            record_decision(server.store, conn, User(SUPERVISOR[0], "supervisor"), oldest,
                            "threat", category="OTHER", note="seen again on the search")
    server.service.notify_change()
    page.wait_for_timeout(2500)  # the live event comes and must change nothing here
    expect(page.locator("#queue-count")).to_have_text(f"1 of {total}")
    for shown in range(2, total + 1):  # "Show older scans" then brings every scan, one page at a time
        page.click("#queue-more")
        expect(page.locator("#queue-count")).to_have_text(f"{shown} of {total}")
    rows = page.locator(".scan-row")
    assert sorted(rows.nth(i).get_attribute("data-scan") for i in range(total)) == sorted(
        s["scan_id"] for s in page.request.get(server.base_url + "/api/scans").json()["scans"])


def test_a_scan_that_cannot_be_opened_leaves_no_decision_on_the_one_before(login, server):
    from urllib.parse import quote

    page = login()
    first = page.locator(".scan-row").first.get_attribute("data-scan")
    second = page.locator(".scan-row").nth(1).get_attribute("data-scan")
    wait_view(page, first + "?")
    expect(page.locator("#decide-search")).to_be_enabled()
    page.route(f"**/api/scans/{quote(second, safe='')}", lambda route: route.fulfill(status=503, body='{"detail": "down"}',
                                                                        content_type="application/json"))
    page.keyboard.press("j")  # the queue moves on; the scan does not open
    expect(page.locator("#banner-text")).to_contain_text("could not be opened")
    for outcome in ("clear", "search", "threat"):
        expect(page.locator(f"#decide-{outcome}")).to_be_disabled()
    page.keyboard.press("s")
    expect(page.locator("#decision-message")).not_to_contain_text("Recorded")
