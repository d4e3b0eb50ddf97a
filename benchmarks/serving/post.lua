-- wrk script: POST the body in $WRK_BODY_FILE with a bearer key ($WRK_KEY, optional). The content type is JSON
-- unless $WRK_CONTENT_TYPE says otherwise; $WRK_HEADER_LENGTH, when set, is sent as Inference-Header-Content-Length
-- (the OIP binary tensor extension: the body is the JSON header, then raw tensor bytes).
local f = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"
local header_length = os.getenv("WRK_HEADER_LENGTH")
if header_length and header_length ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = header_length
end
local key = os.getenv("WRK_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
