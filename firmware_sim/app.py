"""The Safety app's side of the HTTP API, as simulated residents use it (httpx).

Contract (issue 3 / the API issue): ``POST /v1/residents`` -> 201 ``{"resident_id", "token"}``;
``Authorization: Bearer <token>``; ``POST /v1/walks`` -> 201 ``{"walk_id", "district", "lamps"}``;
``POST /v1/walks/{id}/positions`` (at most 2/s); ``POST /v1/walks/{id}/end``;
``POST /v1/sos`` with an ``Idempotency-Key`` header -> 202 ``{"alert_id", "district", "status"}``.
Every failure becomes an :class:`AppApiError` that says what was called and what came back.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from .residents import GpsFix

__all__ = ["AppApiError", "SafetyApp"]

TIMEOUT_S = 10.0


class AppApiError(Exception):
    """A Safety-app API call failed: ``call`` names it, ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, call: str, status: int | None, detail: str) -> None:
        self.call = call
        self.status = status
        self.detail = detail
        super().__init__(f"{call}: {detail}" if status is None else f"{call}: HTTP {status}: {detail}")


class SafetyApp:
    """One resident's app session: registration token, then walks and SOS."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        self.resident_id: str | None = None
        self._token: str | None = None

    async def _post(
        self, call: str, path: str, body: dict[str, Any], expect: int | None, **headers: str
    ) -> Any:
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = await self._client.post(path, json=body, headers=headers, timeout=TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise AppApiError(call, None, f"no answer from {self._client.base_url} ({exc!r})") from exc
        ok = response.is_success if expect is None else response.status_code == expect
        if not ok:
            raise AppApiError(call, response.status_code, response.text[:300])
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise AppApiError(call, response.status_code, "answer is not JSON") from exc

    async def register(self) -> str:
        """``POST /v1/residents``: get a resident id and bearer token."""
        answer = await self._post("register", "/v1/residents", {}, 201)
        self.resident_id, self._token = str(answer["resident_id"]), str(answer["token"])
        return self.resident_id

    async def start_walk(self, fix: GpsFix) -> dict[str, Any]:
        """``POST /v1/walks``: safe-walk mode on; returns ``{"walk_id", "district", "lamps"}``."""
        answer: dict[str, Any] = await self._post("start walk", "/v1/walks", fix.as_json(), 201)
        return answer

    async def position(self, walk_id: str, fix: GpsFix) -> None:
        """``POST /v1/walks/{id}/positions``: one GPS fix (call at most twice a second)."""
        await self._post("position", f"/v1/walks/{walk_id}/positions", fix.as_json(), None)

    async def end_walk(self, walk_id: str) -> None:
        """``POST /v1/walks/{id}/end``."""
        await self._post("end walk", f"/v1/walks/{walk_id}/end", {}, None)

    async def sos(self, fix: GpsFix, walk_id: str | None = None, idempotency_key: str | None = None) -> Any:
        """``POST /v1/sos``: returns ``{"alert_id", "district", "status"}``; same key = same alert."""
        body: dict[str, Any] = {
            "lat": round(fix.lat, 7),
            "lon": round(fix.lon, 7),
            "accuracy_m": fix.accuracy_m,
        }
        if walk_id is not None:
            body["walk_id"] = walk_id
        key = idempotency_key or str(uuid.uuid4())
        return await self._post("sos", "/v1/sos", body, 202, **{"Idempotency-Key": key})
