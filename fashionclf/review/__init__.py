"""The review desk: a catalogue of predicted photos (db), a web page to decide the uncertain ones (app), the
labels written back out for the next training run (export) and the Label Studio round trip (labelstudio)."""
