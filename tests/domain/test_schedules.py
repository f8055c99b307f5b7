from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from wecom_plugin.domain import schedules

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")


def test_interval_occurrences_follow_each_other():
    start = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
    spec = {"kind": "interval", "seconds": 600}
    times, following = schedules.occurrences_between(spec, SHANGHAI, start, start + timedelta(minutes=25), 100)
    assert times == [start, start + timedelta(minutes=10), start + timedelta(minutes=20)]
    assert following == start + timedelta(minutes=30)


def test_daily_times_are_local_wall_times_in_the_schedule_zone():
    spec = {"kind": "daily", "times": ["09:00", "17:30"]}
    after = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)  # 08:00 in Shanghai
    first = schedules.next_after(spec, SHANGHAI, after)
    second = schedules.next_after(spec, SHANGHAI, first)
    third = schedules.next_after(spec, SHANGHAI, second)
    assert [t.astimezone(SHANGHAI).strftime("%d %H:%M") for t in (first, second, third)] == [
        "25 09:00",
        "25 17:30",
        "26 09:00",
    ]


def test_daily_weekdays_skip_the_weekend():
    spec = {"kind": "daily", "times": ["09:00"], "weekdays": [0, 1, 2, 3, 4]}
    friday_evening = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert schedules.next_after(spec, SHANGHAI, friday_evening).astimezone(SHANGHAI).strftime("%a %H:%M") == (
        "Mon 09:00"
    )


def test_a_wall_time_in_the_spring_forward_gap_runs_once_shifted_forward():
    spec = {"kind": "daily", "times": ["02:30"]}
    first = schedules.next_after(spec, BERLIN, datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    second = schedules.next_after(spec, BERLIN, first)
    assert first.astimezone(BERLIN).strftime("%m-%d %H:%M") == "03-29 03:30"
    assert second.astimezone(BERLIN).strftime("%m-%d %H:%M") == "03-30 02:30"


def test_a_wall_time_that_happens_twice_on_fall_back_runs_once():
    spec = {"kind": "daily", "times": ["02:30"]}
    first = schedules.next_after(spec, BERLIN, datetime(2026, 10, 24, 12, 0, tzinfo=UTC))
    second = schedules.next_after(spec, BERLIN, first)
    assert first.astimezone(BERLIN).strftime("%m-%d %H:%M %Z") == "10-25 02:30 CEST"
    assert second.astimezone(BERLIN).strftime("%m-%d %H:%M") == "10-26 02:30"


@pytest.mark.parametrize(
    "spec, message",
    [
        (None, "object"),
        ({"kind": "cron"}, "unknown schedule kind"),
        ({"kind": "interval", "seconds": 0}, "seconds >= 1"),
        ({"kind": "interval", "seconds": True}, "seconds >= 1"),
        ({"kind": "daily", "times": []}, '"times"'),
        ({"kind": "daily", "times": ["9"]}, "HH:MM"),
        ({"kind": "daily", "times": ["25:00"]}, "HH:MM"),
        ({"kind": "daily", "times": ["09:00"], "weekdays": [7]}, "weekdays"),
    ],
)
def test_malformed_specs_are_refused_with_a_clear_message(spec, message):
    with pytest.raises(schedules.SpecError, match=message):
        schedules.validate(spec)


def test_naive_times_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        schedules.next_after({"kind": "interval", "seconds": 5}, SHANGHAI, datetime(2026, 1, 1))


def test_several_times_on_a_spring_forward_day_each_run_once_in_instant_order():
    new_york = ZoneInfo("America/New_York")
    spec = {"kind": "daily", "times": ["02:30", "03:00"]}
    start = datetime(2026, 3, 8, 0, 0, tzinfo=UTC)  # 2026-03-07 19:00 in New York
    times, _ = schedules.occurrences_between(spec, new_york, schedules.next_after(spec, new_york, start),
                                             datetime(2026, 3, 9, 12, 0, tzinfo=UTC), 10)  # fmt: skip
    assert [t.astimezone(new_york).strftime("%d %H:%M") for t in times] == [
        "08 03:00",
        "08 03:30",
        "09 02:30",
        "09 03:00",
    ]
