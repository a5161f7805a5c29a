"""What detecting a question's language costs: memory and time to build the detector, and time
per question. Prints figures; asserts nothing (run: .venv/bin/python bench/language_detection.py).
Each build runs in a fresh process, so the memory is the detector's alone."""

from __future__ import annotations

import json
import subprocess
import sys

MEASURE = r"""
import json, resource, sys, time
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
from lingua import LanguageDetectorBuilder
from app.language import LANGUAGES, detector
if sys.argv[1] == "low":
    built = detector()
else:
    built = (LanguageDetectorBuilder.from_languages(*[l for l, _ in LANGUAGES.values()])
             .with_preloaded_language_models().build())
build_s = time.perf_counter() - started
rss_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
questions = ["Wie lange dauert der Versand nach Deutschland?", "¿Cuánto tarda el envío?",
             "Combien de temps prend la livraison ?", "शिपिंग में कितना समय लगता है?",
             "How long does shipping take to the USA?", "Kann ich mit PayPal bezahlen?"]
rounds = 3000
started = time.perf_counter()
for number in range(rounds):
    built.detect_language_of(questions[number % len(questions)])
per_question_us = (time.perf_counter() - started) / rounds * 1e6
print(json.dumps({"build_s": build_s, "rss_mb": rss_mb, "per_question_us": per_question_us}))
"""

for mode, label in (("low", "low accuracy (what the app uses)"), ("high", "high accuracy")):
    out = subprocess.run([sys.executable, "-c", MEASURE, mode], capture_output=True, text=True,
                         check=True).stdout
    figures = json.loads(out)
    print(f"{label}: import+build {figures['build_s']:.2f} s, +{figures['rss_mb']:.0f} MB RSS, "
          f"{figures['per_question_us']:.0f} us per question")
