#ifndef AFTERCARE_CCURL_SHIM_H
#define AFTERCARE_CCURL_SHIM_H
#include <curl/curl.h>
#endif
