"""Records a CSV of simulated sensor readings from a heated, ventilated office: `python -m demo.room_sensors`.

SIMULATED data, seeded, one row per minute: what fedmq's sensor-series examples train on (no installed package
ships a labelled sensor series). The physics, with every constant below:

- Heat (a one-node RC model): C dT/dt = (T_out - T) / R + P_heater * on + 100 W * occupants + solar gain,
  integrated with a 60 s Euler step. C = 2.5 MJ/K and 1/R = 110 W/K per room scale (time constant ~6 h).
- Heater: a 2 kW thermostat with hysteresis (+-0.4 K) around 21.0 C from 07:00 to 19:00 on weekdays, 16.0 C
  otherwise.
- Outdoor: 6 C mean, a 5 K daily swing peaking at 15:00, and a slow random walk (weather).
- CO2 (well-mixed room): V dC/dt = Q (C_out - C) + occupants * 5.2e-6 m3/s * 1e6 ppm; C_out = 420 ppm,
  V = 75 m3, ventilation Q = 0.012 m3/s, tripled while occupied (demand ventilation).
- Humidity: 35 % + 2.5 % per occupant (moisture), minus 1.5 % per K above 20 C, first-order lag of 20 min.
- Occupancy: weekdays, 1 to 4 people arrive around 08:30 and leave around 17:30, lunch away 12:00-13:00 with
  probability 0.6, short absences; weekends empty except an occasional visit.
- Sensors: Gaussian noise (0.08 K, 12 ppm, 0.8 %), rounded like a cheap sensor; heater_on is the relay state.

Columns: minute, outdoor_c, indoor_c, heater_on, co2_ppm, humidity_pct, occupancy ("empty" or "occupied")."""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLUMNS = ("minute", "outdoor_c", "indoor_c", "heater_on", "co2_ppm", "humidity_pct", "occupancy")
STEP_S = 60.0
MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True)
class Room:
    """One office's constants; `scale` makes rooms differ (a device per room is naturally non-IID)."""

    capacitance_j_per_k: float = 2.5e6
    conductance_w_per_k: float = 110.0
    heater_w: float = 2000.0
    volume_m3: float = 75.0
    ventilation_m3_s: float = 0.012
    max_occupants: int = 4

    @classmethod
    def varied(cls, rng: np.random.Generator) -> "Room":
        scale = rng.uniform(0.7, 1.4)
        return cls(2.5e6 * scale, 110.0 * scale, 2000.0 * rng.uniform(0.9, 1.3), 75.0 * scale,
                   0.012 * rng.uniform(0.8, 1.3), int(rng.integers(2, 6)))


def occupancy_schedule(days: int, room: Room, rng: np.random.Generator) -> np.ndarray:
    """People in the room each minute."""
    people = np.zeros(days * MINUTES_PER_DAY, dtype=np.int64)
    for day in range(days):
        base = day * MINUTES_PER_DAY
        if day % 7 >= 5:  # the weekend: an occasional visit
            if rng.random() < 0.3:
                start = base + int(rng.uniform(10, 15) * 60)
                people[start:start + int(rng.uniform(30, 120))] = 1
            continue
        count = int(rng.integers(1, room.max_occupants + 1))
        arrive = base + int(rng.normal(8.5, 0.4) * 60)
        leave = base + int(rng.normal(17.5, 0.5) * 60)
        people[arrive:leave] = count
        if rng.random() < 0.6:
            people[base + 12 * 60 + int(rng.integers(0, 15)):base + 13 * 60 + int(rng.integers(-10, 10))] = 0
        for _ in range(int(rng.integers(0, 4))):  # short absences and visitors
            start = int(rng.integers(arrive, max(arrive + 1, leave - 30)))
            people[start:start + int(rng.integers(5, 30))] = max(0, count + int(rng.choice([-count, 1])))
    return people


def simulate(days: int, seed: int, room: Room | None = None) -> list[list[object]]:
    """The rows of the CSV: one per minute for `days` days, starting on a Monday at midnight."""
    rng = np.random.default_rng(seed)
    room = room or Room.varied(rng)
    people = occupancy_schedule(days, room, rng)
    indoor, co2, humidity, heater_on, weather = 18.0, 450.0, 40.0, False, 0.0
    rows: list[list[object]] = []
    for minute in range(days * MINUTES_PER_DAY):
        hour = (minute % MINUTES_PER_DAY) / 60.0
        weekday = (minute // MINUTES_PER_DAY) % 7 < 5
        weather = 0.999 * weather + rng.normal(0, 0.05)
        outdoor = 6.0 + 5.0 * math.cos(2 * math.pi * (hour - 15.0) / 24.0) + weather
        setpoint = 21.0 if weekday and 7.0 <= hour < 19.0 else 16.0
        if indoor < setpoint - 0.4:
            heater_on = True
        elif indoor > setpoint + 0.4:
            heater_on = False
        solar = max(0.0, 400.0 * math.sin(math.pi * (hour - 7.0) / 10.0)) if 7.0 <= hour <= 17.0 else 0.0
        n = int(people[minute])
        heat_w = (outdoor - indoor) * room.conductance_w_per_k + room.heater_w * heater_on + 100.0 * n + solar
        indoor += STEP_S * heat_w / room.capacitance_j_per_k
        ventilation = room.ventilation_m3_s * (3.0 if n else 1.0)
        co2 += STEP_S * (ventilation * (420.0 - co2) + n * 5.2e-6 * 1e6) / room.volume_m3
        humidity += (35.0 + 2.5 * n - 1.5 * (indoor - 20.0) - humidity) * (STEP_S / (20 * 60))
        rows.append([minute, round(outdoor + rng.normal(0, 0.1), 2), round(indoor + rng.normal(0, 0.08), 2),
                     int(heater_on), round(co2 + rng.normal(0, 12.0)), round(humidity + rng.normal(0, 0.8), 1),
                     "occupied" if n else "empty"])
    return rows


def write_csv(path: str | Path, days: int, seed: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(simulate(days, seed))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.room_sensors", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("--out", default="room.csv", help="CSV file to write")
    parser.add_argument("--days", type=int, default=14, help="days simulated (one row per minute)")
    parser.add_argument("--seed", type=int, default=0, help="the room's constants, weather and occupants")
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be >= 1")
    path = write_csv(args.out, args.days, args.seed)
    print(f"wrote {args.days * MINUTES_PER_DAY} rows of simulated sensor readings to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
