// Package netns runs code inside a Linux network namespace, for tests that
// build several hosts from namespaces (test/e2e, internal/wg4to6).
package netns
