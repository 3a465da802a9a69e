"""The photoreal mode: LivePortrait's face and head motion with MuseTalk's lips, composed
(pipeline.py); see docs/modes/photoreal.md."""
