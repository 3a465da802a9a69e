// Microphone capture on the audio thread: mono float32 blocks of 20 ms, posted to the page.
// The AudioContext runs at the session's rate (16 kHz), so no resampling happens here.
const BLOCK_S = 0.02;

class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(Math.round(sampleRate * BLOCK_S));
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.append(channel);
    return true; // keep running until the node is disconnected
  }

  append(samples) {
    let offset = 0;
    while (offset < samples.length) {
      const n = Math.min(samples.length - offset, this.block.length - this.filled);
      this.block.set(samples.subarray(offset, offset + n), this.filled);
      this.filled += n;
      offset += n;
      if (this.filled === this.block.length) {
        this.port.postMessage(this.block.slice());
        this.filled = 0;
      }
    }
  }
}

registerProcessor("pcm-capture", PcmCapture);
