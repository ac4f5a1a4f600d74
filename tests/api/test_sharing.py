"""A character's public share page is off until its owner switches it on, shows only
that character's animation, ends at once when switched off, and keeps its address; the
pictures made on the way are their owner's alone."""

from __future__ import annotations

import httpx

from tests.support.client import User, signup
from tests.support.photos import photo


async def _character(user: User) -> tuple[str, str]:
    generation_id = (await user.generate(photo("astronaut.png"))).json()["id"]
    events = await user.events(generation_id)
    assert events[-1].event == "completed", events[-1]
    return generation_id, events[-1].data["character_id"]


async def test_sharing_is_off_until_the_owner_switches_it_on_and_ends_when_switched_off(
    http: httpx.AsyncClient,
    models: httpx.AsyncClient,  # resets the model server: no fault left by another test
) -> None:
    owner, other = await signup(http), await signup(http)
    _, character_id = await _character(owner)
    character = (await http.get(f"/v1/characters/{character_id}", headers=owner.headers)).json()
    assert character["shared"] is False and character["share_url"] is None

    route = f"/v1/characters/{character_id}/share"
    # Only its owner can switch it.
    refused = await http.put(route, json={"shared": True}, headers=other.headers)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    on = (await http.put(route, json={"shared": True}, headers=owner.headers)).json()
    assert on["shared"] is True and on["share_url"].startswith(str(http.base_url).rstrip("/"))
    slug = on["share_url"].rsplit("/s/", 1)[1]

    anonymous = httpx.AsyncClient(base_url=http.base_url)
    async with anonymous:
        shared = (await anonymous.get(f"/v1/shared/{slug}")).json()
        assert set(shared) == {"assets", "width", "height"}
        webm = await anonymous.get(shared["assets"]["webm"])
        assert webm.status_code == 200 and webm.headers["content-type"] == "video/webm"
        owned = await http.get(f"/v1/characters/{character_id}/assets/webm", headers=owner.headers)
        assert webm.content == owned.content
        page = await anonymous.get(f"/s/{slug}")
        assert (
            page.status_code == 200
            and "default-src 'self'" in page.headers["content-security-policy"]
        )

        off = (await http.put(route, json={"shared": False}, headers=owner.headers)).json()
        assert off == {"shared": False, "share_url": None}
        for path in (f"/v1/shared/{slug}", f"/v1/shared/{slug}/webm", f"/v1/shared/{slug}/png"):
            gone = await anonymous.get(path)
            assert gone.status_code == 404, path
        # The same address when switched back on: a printed QR code works again.
        again = (await http.put(route, json={"shared": True}, headers=owner.headers)).json()
        assert again["share_url"] == on["share_url"]
        assert (await anonymous.get(f"/v1/shared/{slug}/png")).status_code == 200
        # A guessed slug finds nothing.
        assert (await anonymous.get("/v1/shared/not-a-real-slug")).status_code == 404


async def test_the_pictures_made_on_the_way_are_announced_and_served_to_their_owner_only(
    http: httpx.AsyncClient, models: httpx.AsyncClient
) -> None:
    owner, other = await signup(http), await signup(http)
    generation_id = (await owner.generate(photo("astronaut.png"))).json()["id"]
    events = await owner.events(generation_id)
    announced = [e.data["picture"] for e in events if "picture" in e.data]
    assert announced[0] == "photo" and {"cartoon", "cutout"} <= set(announced), announced
    for name in announced:
        route = f"/v1/generations/{generation_id}/pictures/{name}"
        mine = await http.get(route, headers=owner.headers)
        assert mine.status_code == 200 and mine.headers["content-type"] == "image/png"
        assert mine.content.startswith(b"\x89PNG")
        assert (await http.get(route, headers=other.headers)).status_code == 404
        assert (await http.get(route)).status_code == 401
    # The cut-out is transparent around the figure: a PNG with an alpha channel.
    cutout = await http.get(
        f"/v1/generations/{generation_id}/pictures/cutout", headers=owner.headers
    )
    assert cutout.content[25] == 6  # IHDR colour type 6: RGBA
    unknown = await http.get(
        f"/v1/generations/{generation_id}/pictures/secret", headers=owner.headers
    )
    assert unknown.status_code == 404
