// Streams one chat completion through @huggingface/inference, as the site generator does:
//   node hf_stream.mjs <endpointUrl> <request.json> [maxChunks]
// The API key comes from SPACESERVE_KEY. Prints one JSON line: chunks, text, model, finish reason
// (or the error). Stops reading after maxChunks content chunks, as a client that leaves would.
import { readFileSync } from "node:fs";
import { InferenceClient } from "@huggingface/inference";

const [endpointUrl, requestFile, maxChunksArg] = process.argv.slice(2);
const request = JSON.parse(readFileSync(requestFile, "utf8"));
const maxChunks = Number(maxChunksArg || "1000000");
const client = new InferenceClient(process.env.SPACESERVE_KEY, { endpointUrl });

const out = { chunks: 0, text: "", model: null, finish_reason: null, error: null };
try {
  for await (const chunk of client.chatCompletionStream(request)) {
    out.model = chunk.model ?? out.model;
    const choice = chunk.choices?.[0];
    if (choice?.delta?.content) {
      out.text += choice.delta.content;
      out.chunks += 1;
    }
    if (choice?.finish_reason) out.finish_reason = choice.finish_reason;
    if (out.chunks >= maxChunks) break;
  }
} catch (err) {
  out.error = `${err.name}: ${err.message}`;
}
console.log(JSON.stringify(out));
