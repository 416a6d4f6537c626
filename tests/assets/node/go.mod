// The small programs the test node packs into images of its own: a pause
// program for the pod sandboxes and an HTTP server and client for the tests.
// Standard library only, so they build offline and statically.
module modelfleet.test/node-assets

go 1.25.0
