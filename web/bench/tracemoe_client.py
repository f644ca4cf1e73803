"""Checks AnimeLens against a real trace.moe client (PyPI's aiotracemoeapi), outside CI.

Usage: python3 -m venv v && v/bin/pip install aiotracemoeapi
       v/bin/python web/bench/tracemoe_client.py http://127.0.0.1:8080 SCREENSHOT.png [ANILIST_ID]
against `animelens serve` with at least one video added (`POST /api/v1/videos`).
"""
import asyncio
import sys

from aiotracemoeapi import TraceMoe


async def main(base_url: str, screenshot: str, anilist_id: int | None) -> None:
    async with TraceMoe(base_url=base_url) as api:
        me = await api.me()
        print(f"me: id={me.id} quota={me.quota} left={me.quota_left}")
        found = await api.search(screenshot, anilist_id=anilist_id)
        print(f"frameCount={found.frame_count} results={len(found.result)}")
        for r in found.result[:5]:
            print(f"  {r.similarity:.3f} anilist={r.anilist_id} {r.filename} episode={r.episode} "
                  f"{r.anime_from:.2f}-{r.anime_to:.2f} s video={r.video}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None))
