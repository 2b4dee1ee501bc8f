"""What checkout's processes share, one implementation each (distribution checkout-common):

- `backoff`: the retry schedule (capped exponential growth, equal jitter);
- `supervisor`: background loops that never die silently, and start-up steps that wait for
  their dependencies;
- `settings`: how a process's settings are read from the environment (flags, secrets from
  files, blanks, the errors that name their variable);
- `input_key`: where an uploaded video is stored (`input/{video_id}.mp4`), the one key the
  runner reads for an event;
- `result_key`: where a result goes (RESULT_KEY_TEMPLATE: its check, the key, its folder).

The server, the relay and the detection runner import it; it imports none of them
(.importlinter). The SDK keeps its own copy of the schedule (checkout_client.backoff).
"""
