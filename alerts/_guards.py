"""Safe-village guards: who is on duty at an instant, the guards an SOS reaches, and their answers.

A guard patrols one guard zone (a neighbourhood, its dong code) on a shift: a start and an end
time of day in Seoul time and the weekdays it works. A shift whose end is not after its start
crosses midnight and belongs to the weekday it started: a Friday shift 21:00-02:30 covers
Saturday 01:00, and a guard off on Saturday is not on duty at Saturday 21:30. Seoul time is
UTC+9 all year (Korea has kept no daylight saving time since 1988), so a fixed offset stands for
Asia/Seoul and the core needs no time-zone database.

An SOS inside a zone is sent to the guards on duty there at that instant, recorded in its
timeline as an ``escalated`` event with ``escalation=guards`` and the guards' usernames
(``guards``); only those guards may acknowledge it (``guard_acknowledged``) and report their
arrival (``guard_arrived``). When none of them acknowledges within the policy's
``guard_ack_after_s``, the escalation chain goes on (`alerts._escalation`, ``guards_unanswered``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from alerts._errors import InvalidAlertData, InvalidTransition
from alerts._model import Alert, AlertKind, Event, EventAction, require_aware, with_event

SEOUL = dt.timezone(dt.timedelta(hours=9), "KST")  # Asia/Seoul: no daylight saving time since 1988
GUARDS = "guards"  # the escalation detail of a guard notification
WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()


@dataclass(frozen=True, slots=True)
class GuardShift:
    """When a guard works: [starts, ends) Seoul time on `weekdays` (0 = Monday ... 6 = Sunday);
    ``ends <= starts`` crosses midnight, the shift belonging to the weekday it started."""

    starts: dt.time
    ends: dt.time
    weekdays: frozenset[int]

    def __post_init__(self) -> None:
        if not self.weekdays or not self.weekdays <= frozenset(range(7)):
            raise InvalidAlertData(f"a shift needs weekdays among 0-6, got {sorted(self.weekdays)}")
        if self.starts == self.ends:
            raise InvalidAlertData(f"a shift cannot start and end at {self.starts.isoformat()}")
        if self.starts.tzinfo is not None or self.ends.tzinfo is not None:
            raise InvalidAlertData("shift times are Seoul wall-clock times, without a time zone")

    @property
    def crosses_midnight(self) -> bool:
        """True when the shift ends on the day after it started."""
        return self.ends < self.starts

    def started_on(self, at: dt.datetime) -> dt.date | None:
        """The Seoul date on which the shift covering `at` started, or None when `at` is outside
        every shift of this kind (whatever the weekdays)."""
        local = require_aware(at, "at").astimezone(SEOUL)
        t = local.time().replace(tzinfo=None)
        if not self.crosses_midnight:
            return local.date() if self.starts <= t < self.ends else None
        if t >= self.starts:
            return local.date()
        if t < self.ends:
            return local.date() - dt.timedelta(days=1)
        return None

    def covers(self, at: dt.datetime) -> bool:
        """True when `at` falls inside a shift that started on one of the weekdays."""
        day = self.started_on(at)
        return day is not None and day.weekday() in self.weekdays


@dataclass(frozen=True, slots=True)
class Guard:
    """A guard of the roster: its account, its zone (dong code) and its shift."""

    username: str
    zone_code: str
    shift: GuardShift
    name: str = ""


def on_duty(guard: Guard, at: dt.datetime) -> bool:
    """True when the guard is on shift at `at`."""
    return guard.shift.covers(at)


def guards_on_duty(roster: Iterable[Guard], zone_code: str | None, at: dt.datetime) -> tuple[Guard, ...]:
    """The guards of `zone_code` on duty at `at`, by username; none for no zone."""
    if not zone_code:
        return ()
    return tuple(
        sorted((g for g in roster if g.zone_code == zone_code and on_duty(g, at)), key=lambda g: g.username)
    )


def parse_weekdays(text: str) -> frozenset[int]:
    """``mon-fri``, ``sun-thu``, ``mon,wed,fri`` or ``fri-mon`` (wrapping) -> weekday numbers;
    InvalidAlertData naming what is wrong."""
    days: set[int] = set()
    for part in (p.strip().lower() for p in text.replace(" ", "").split(",")):
        if not part:
            continue
        first, sep, last = part.partition("-")
        try:
            a = WEEKDAY_NAMES.index(first[:3]) if len(first) >= 3 else -1
            b = WEEKDAY_NAMES.index(last[:3]) if sep and len(last) >= 3 else a
        except ValueError:
            a = b = -1
        if a < 0 or b < 0 or (sep and not last):
            raise InvalidAlertData(f"weekdays: {part!r} is not a day or a range of days (mon ... sun)")
        n = a
        days.add(n)
        while n != b:
            n = (n + 1) % 7
            days.add(n)
    if not days:
        raise InvalidAlertData("weekdays: none given (e.g. mon-fri)")
    return frozenset(days)


def format_weekdays(days: frozenset[int]) -> str:
    """Weekday numbers as names, Monday first (``mon,tue,wed,thu,fri``)."""
    return ",".join(WEEKDAY_NAMES[d] for d in sorted(days))


# --------------------------------------------------------------------------- the alert's side


def _guard_event(alert: Alert) -> Event | None:
    for event in alert.timeline:
        if event.action is EventAction.ESCALATED and event.detail("escalation") == GUARDS:
            return event
    return None


def guards_notified(alert: Alert) -> bool:
    """True once the alert's timeline records a guard notification."""
    return _guard_event(alert) is not None


def guards_sent_to(alert: Alert) -> tuple[str, ...]:
    """The usernames of the guards the alert was sent to (empty: none, or the zone's webhook only)."""
    event = _guard_event(alert)
    return tuple((event.detail("guards") or "").split()) if event is not None else ()


def guards_notified_at(alert: Alert) -> dt.datetime | None:
    """When the guards were notified, or None."""
    event = _guard_event(alert)
    return event.at if event is not None else None


def notify_guards(
    alert: Alert, zone_code: str, zone_name: str, guards: Iterable[Guard], now: dt.datetime, actor: str
) -> Alert:
    """The alert with the notification of these guards of the zone recorded (once: an alert
    already notified, inactive or not an SOS is returned as it is)."""
    if guards_notified(alert) or not alert.is_active or alert.kind is not AlertKind.SOS:
        return alert
    usernames = " ".join(sorted(g.username for g in guards))
    details: tuple[tuple[str, str], ...] = (
        ("escalation", GUARDS),
        ("targets", f"guards:{zone_code}"),
        ("zone", zone_name),
    )
    if usernames:
        details += (("guards", usernames),)
    return with_event(
        alert, Event(at=require_aware(now, "now"), actor=actor, action=EventAction.ESCALATED, details=details)
    )


def guard_actor(username: str) -> str:
    """The actor name of a guard in timelines and the audit log."""
    return f"guard:{username}"


def _guard_done(alert: Alert, username: str, action: EventAction) -> bool:
    actor = guard_actor(username)
    return any(e.action is action and e.actor == actor for e in alert.timeline)


def guard_acknowledged(alert: Alert, username: str | None = None) -> bool:
    """True when a guard (or the guard `username`) acknowledged the alert."""
    return any(
        e.action is EventAction.GUARD_ACKNOWLEDGED and (username is None or e.actor == guard_actor(username))
        for e in alert.timeline
    )


def _guard_refusal(alert: Alert, username: str, action: str) -> None:
    if username not in guards_sent_to(alert):
        raise InvalidTransition(alert.id, action, alert.state.value, "not sent to this guard")
    if not alert.is_active:
        raise InvalidTransition(alert.id, action, alert.state.value, alert.state.value)


def guard_acknowledge(alert: Alert, username: str, now: dt.datetime, note: str = "") -> Alert:
    """A guard it was sent to has seen the SOS and is on the way (again: unchanged). The centre's
    state of the alert is not changed: the guard answers for the patrol, not for the centre."""
    _guard_refusal(alert, username, "guard_acknowledge")
    if _guard_done(alert, username, EventAction.GUARD_ACKNOWLEDGED):
        return alert
    event = Event(
        at=require_aware(now, "now"),
        actor=guard_actor(username),
        action=EventAction.GUARD_ACKNOWLEDGED,
        note=note,
    )
    return with_event(alert, event)


def guard_arrive(alert: Alert, username: str, now: dt.datetime, note: str = "") -> Alert:
    """A guard it was sent to is at the SOS's place (acknowledging implicitly; again: unchanged)."""
    _guard_refusal(alert, username, "guard_arrive")
    if _guard_done(alert, username, EventAction.GUARD_ARRIVED):
        return alert
    at = require_aware(now, "now")
    if not _guard_done(alert, username, EventAction.GUARD_ACKNOWLEDGED):
        alert = guard_acknowledge(alert, username, at)
    event = Event(at=at, actor=guard_actor(username), action=EventAction.GUARD_ARRIVED, note=note)
    return with_event(alert, event)
