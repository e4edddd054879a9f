package proxy

import (
	"io"
	"net"
	"net/http"
	"strconv"

	"github.com/webgw/webgw/internal/route"
)

// serveDirect proxies a request that arrived through net/http's server (an
// HTTP/2 client, or HTTP/1.1 on a connection the fast path does not take) to
// a plain http service over the fast path's stream pool, in the handler's
// own goroutine: no http.Transport, no request clone. Upgrades keep going
// through httputil.ReverseProxy. It reports false when the response broke
// off mid-body; the caller must then abort the response (http.ErrAbortHandler)
// so the client cannot take a truncated body for a whole one.
func (p *HTTP) serveDirect(w http.ResponseWriter, r *http.Request, svc *route.Service) bool {
	if !validTarget(r) {
		ErrorPage(w, http.StatusBadRequest, "The request target is malformed.")
		return true
	}
	sp := p.proxyFor(svc)
	clientIP, _, _ := net.SplitHostPort(r.RemoteAddr)
	info := func(resp *http.Response) error {
		h := w.Header()
		copyHeader(h, resp.Header)
		w.WriteHeader(resp.StatusCode)
		// WriteHeader keeps the map for a 1xx; the final answer must not
		// carry the informational one's fields (as httputil.ReverseProxy).
		clear(h)
		return nil
	}
	var cl *ppClient
	if v := svc.ProxyProtocol(); v != 0 {
		var err error
		if cl, err = ppClientOf(v, r); err != nil {
			ErrorPage(w, http.StatusBadGateway, "The client's address cannot be sent to the service.")
			return true
		}
	}
	u, resp, werrc, err := sp.roundTrip(r.Context(), svc, r, clientIP, info, cl)
	if err != nil {
		status, msg := upstreamError(err)
		if r.Context().Err() != nil {
			status, msg = 499, ""
		}
		if status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		if status == 499 {
			if rec, ok := w.(*recorder); ok && rec.status == 0 {
				rec.status = status
			}
			return true
		}
		ErrorPage(w, status, msg)
		return true
	}
	defer u.up.End()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// Not asked for (upgrades take the other path): refuse it.
		u.close()
		resp.Body.Close()
		if werrc != nil {
			<-werrc
		}
		ErrorPage(w, http.StatusBadGateway, "The service switched protocols without being asked to.")
		return true
	}
	ok := copyResponse(w, r, resp)
	sp.finish(u, resp, werrc, ok, nil)
	return ok
}

// copyHeader copies end-to-end headers (hop-by-hop and framing ones are the
// server's business).
func copyHeader(dst, src http.Header) {
	skip := connectionTokens(src)
	for k, vv := range src {
		if hopHeaders[k] || skip[k] {
			continue
		}
		dst[k] = append(dst[k][:0:0], vv...)
	}
}

// copyResponse writes resp through w and reports whether the upstream was
// read to the end of the response.
func copyResponse(w http.ResponseWriter, r *http.Request, resp *http.Response) bool {
	h := w.Header()
	copyHeader(h, resp.Header)
	// A HEAD answer keeps the length it declares; 204 and 304 get none (a
	// 304's would have to be the representation's, not the 0 read here).
	if resp.ContentLength >= 0 && resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	for k := range resp.Trailer {
		h.Add("Trailer", k)
	}
	w.WriteHeader(resp.StatusCode)
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	buf := *bp
	ok := true
	if resp.ContentLength >= 0 {
		_, err := io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{resp.Body}, buf)
		ok = err == nil
	} else {
		// Unknown length (streaming, SSE): pass each piece on at once.
		rc := http.NewResponseController(w)
		rc.Flush()
		for {
			n, rerr := resp.Body.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					ok = false
					break
				}
				rc.Flush()
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				ok = false
				break
			}
		}
	}
	if !ok {
		return false
	}
	for k, vv := range resp.Trailer {
		h[http.TrailerPrefix+k] = vv
	}
	return true
}
