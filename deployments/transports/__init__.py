"""Frames out: JPEG/MP4 encoding (encode.py), relays paced to the session clock for the
WebSocket and MJPEG (streams.py), WebRTC peers (webrtc.py), and the HAProxy launcher
that keeps the proxy on loopback (haproxy_loopback.py)."""
