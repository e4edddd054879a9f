package edge

import (
	"net"
	"net/http"

	"github.com/webgw/webgw/internal/proxy"
)

// Redirect serves the plain HTTP port: known names are sent to HTTPS with a
// 308 (method and body kept), everything else gets a 404 page.
type Redirect struct {
	Names *Names
	// HTTPSPort is the public HTTPS port; "443" or "" leaves it out of URLs.
	HTTPSPort string
}

func (rd *Redirect) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host := proxy.HostName(r.Host)
	label, ours, svc := rd.Names.Resolve(host)
	if !ours || (label != "" && svc == nil) {
		proxy.ErrorPage(w, http.StatusNotFound, "No service is registered under the name "+host+".")
		return
	}
	target := host
	if rd.HTTPSPort != "" && rd.HTTPSPort != "443" {
		target = net.JoinHostPort(host, rd.HTTPSPort)
	}
	http.Redirect(w, r, "https://"+target+r.URL.RequestURI(), http.StatusPermanentRedirect)
}
